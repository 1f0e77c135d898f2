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
