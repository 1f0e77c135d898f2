import numpy as np
import pytest
from PIL import Image

from recon3d.geometry.camera import R2N2_DISTANCE_UNIT, R2N2_FOCAL_PER_WIDTH, look_at, make_views, project
from tests.conftest import shared_path


def test_look_at_is_a_rotation_and_centres_the_target():
    extr = look_at(np.array([1.0, 0.5, -0.7]))
    rot = extr[:, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(rot), 1.0)
    k = np.array([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]])
    uv, depth = project(np.zeros((1, 3)), k, extr)
    np.testing.assert_allclose(uv, [[50, 50]])
    assert depth[0] == pytest.approx(np.linalg.norm([1.0, 0.5, -0.7]))


def test_up_is_up_in_the_image():
    views = make_views([30.0], [20.0], [2.0], 100.0, 100)
    uv, _ = project(np.array([[0, 0.3, 0], [0, -0.3, 0]]), views.intrinsics[0], views.extrinsics[0])
    assert uv[0, 1] < uv[1, 1]  # +Y projects higher (smaller row) than -Y


def test_r2n2_reference_cameras_put_surface_inside_masks():
    """3D-R2N2's car: its surface points projected with its stored cameras land inside its alpha masks."""
    root = shared_path("reference", "r2n2_car")
    points = np.loadtxt(root / "model.xyz")[:, :3]
    meta = np.loadtxt(root / "rendering" / "rendering_metadata.txt")
    views = make_views(meta[:, 0], meta[:, 1], meta[:, 3] * R2N2_DISTANCE_UNIT, R2N2_FOCAL_PER_WIDTH * 137, 137)
    for i in range(len(meta)):
        alpha = np.asarray(Image.open(root / "rendering" / f"{i:02d}.png"))[..., 3]
        uv, depth = project(points, views.intrinsics[i], views.extrinsics[i])
        col, row = np.floor(uv).astype(int).T
        inside_image = (col >= 0) & (col < 137) & (row >= 0) & (row < 137) & (depth > 0)
        hits = np.zeros(len(points), bool)
        hits[inside_image] = alpha[row[inside_image], col[inside_image]] > 0
        assert hits.mean() >= 0.99, f"view {i}: only {hits.mean():.3f} of the points inside the mask"


def test_right_eye_sees_a_point_f_b_over_z_pixels_to_the_left():
    from recon3d.geometry.camera import right_eye

    views = make_views([30.0], [20.0], [1.5], focal_px=80.0, size=64)
    right = right_eye(views, 0.1)
    points = np.array([[0.0, 0.0, 0.0], [0.2, -0.1, 0.3]])
    uv_left, depth_left = project(points, views.intrinsics[0], views.extrinsics[0])
    uv_right, depth_right = project(points, right.intrinsics[0], right.extrinsics[0])
    assert np.allclose(depth_left, depth_right)  # rectified: same orientation
    assert np.allclose(uv_left[:, 0] - uv_right[:, 0], 80.0 * 0.1 / depth_left)
    assert np.allclose(uv_left[:, 1], uv_right[:, 1])


@pytest.mark.parametrize("category", ["chair", "car", "airplane"])
def test_view_aligned_occupancy_lines_up_with_the_rendered_silhouette(category):
    from recon3d.config import load_config
    from recon3d.data.writing.prepare import normalise_for, solid_for
    from recon3d.geometry.camera import sample_views, view_aligned_occupancy
    from recon3d.geometry.procedural import make_shape
    from recon3d.geometry.render import render_view

    cfg = load_config()
    mesh = make_shape(category, 1)
    verts = normalise_for(mesh.vertices, mesh.faces, cfg.geometry).apply(mesh.vertices)
    solid = solid_for(verts, mesh.faces, cfg.geometry).coarse
    views = sample_views(2, np.random.default_rng(0), size=137, azimuth_range=[0, 360], elevation_range=[25, 30],
                         distance_range=cfg.render.distance_range)
    for i in range(2):
        alpha = render_view(verts, mesh.faces, views.intrinsics[i], views.extrinsics[i], 137, supersample=2)[..., 3]
        blocks = alpha[4:132, 4:132].reshape(32, 4, 32, 4)  # a 128 crop at (4, 4)
        core, reach = blocks.mean((1, 3)) > 127, blocks.max((1, 3)) > 127  # mostly covered, touched at all
        k = views.intrinsics[i].copy()
        k[:2, 2] -= 4
        mirrored = k.copy()
        mirrored[0, 0], mirrored[0, 2] = -k[0, 0], 128 - k[0, 2]  # the crop flipped left-right
        for intr, flip in ((k, slice(None)), (mirrored, slice(None, None, -1))):
            volume = view_aligned_occupancy(solid, intr, views.extrinsics[i], 128, 32, 32)
            seen = volume.any(0)
            # the projected solid covers the silhouette's core and stays within the pixels the shape touches
            assert (seen & core[:, flip]).sum() >= 0.95 * core.sum()
            assert (seen & reach[:, flip]).sum() >= 0.95 * seen.sum()
            assert volume.any((1, 2)).sum() >= 4  # the shape spans several depth slices


def test_view_aligned_occupancy_equals_the_cell_points_looked_up_one_by_one():
    from recon3d.geometry.camera import sample_views, view_aligned_occupancy, volume_cell_points

    rng = np.random.default_rng(3)
    voxels = rng.random((24, 24, 24)) < 0.3
    views = sample_views(3, rng, size=137, azimuth_range=[0, 360], elevation_range=[-20, 40],
                         distance_range=[1.14, 1.66])
    for i in range(3):
        intr = views.intrinsics[i].astype(np.float64)
        if i == 1:  # a mirrored crop
            intr[0, 0], intr[0, 2] = -intr[0, 0], 137 - intr[0, 2]
        extr = views.extrinsics[i].astype(np.float64)
        volume = view_aligned_occupancy(voxels, intr, extr, 137, 8, 6, depth_samples=3)
        d, r, c, s = np.meshgrid(np.arange(6), np.arange(8), np.arange(8), [-1 / 3, 0.0, 1 / 3], indexing="ij")
        cam = volume_cell_points(np.stack([d + s, r, c], -1).reshape(-1, 3), intr, extr, 137, 8, 6)
        index = np.floor(((cam - extr[:, 3]) @ extr[:, :3] + 0.5) * 24).astype(int)  # R^T (x - t), then the voxel
        inside = ((index >= 0) & (index < 24)).all(-1)
        hits = np.zeros(len(index), dtype=bool)
        hits[inside] = voxels[tuple(index[inside].T)]
        expected = hits.reshape(6, 8, 8, 3).any(-1)
        assert volume.shape == (6, 8, 8) and 0 < expected.sum() < expected.size
        assert np.array_equal(volume, expected)
