import numpy as np
import pytest
import trimesh
from scipy import ndimage

from recon3d.data.formats import load_mesh, read_binvox
from recon3d.geometry.transform import normalise
from recon3d.geometry.voxelize import fill_outside, iou, pool, solid_voxels, surface_voxels
from tests.conftest import shared_path


def _exact_sphere(resolution, radius):
    c = (np.arange(resolution) + 0.5) / resolution - 0.5
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    return x**2 + y**2 + z**2 < radius**2


@pytest.fixture(scope="module")
def sphere():
    return trimesh.creation.icosphere(subdivisions=4, radius=0.4)


def test_surface_voxels_match_a_naive_triangle_sampling():
    """Every voxel holding a real share of the triangle is marked; nothing far from it is."""
    tri = np.array([[0.1, 0.1, 0.1], [0.8, 0.2, 0.3], [0.3, 0.9, 0.6]])
    grid = surface_voxels(tri, np.array([[0, 1, 2]]), (0, 0, 0), 0.1, (10, 10, 10))
    u, v = np.meshgrid(np.linspace(0, 1, 400), np.linspace(0, 1, 400))
    keep = u + v <= 1
    pts = tri[0] + u[keep, None] * (tri[1] - tri[0]) + v[keep, None] * (tri[2] - tri[0])
    cells, counts = np.unique(np.floor(pts / 0.1).astype(int), axis=0, return_counts=True)
    substantial = cells[counts > 0.002 * len(pts)]
    assert grid[tuple(substantial.T)].all()
    naive = np.zeros_like(grid)
    naive[tuple(cells.T)] = True
    assert not (grid & ~ndimage.binary_dilation(naive, np.ones((3, 3, 3)))).any()


def test_no_six_connected_leak_through_a_closed_surface():
    """Leaves are shorter than half a voxel, so no face-adjacent pair of voxels straddles the surface unmarked."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        mesh = trimesh.creation.icosphere(subdivisions=1, radius=rng.uniform(0.1, 0.45))
        mesh.apply_translation(rng.uniform(-0.03, 0.03, 3))
        surface = surface_voxels(mesh.vertices, mesh.faces, (-0.5,) * 3, 1 / 48, (48,) * 3)
        filled = fill_outside(surface)
        assert filled[24, 24, 24]  # the centre is inside: the outside did not leak in


def test_fill_outside_of_a_closed_box_and_an_open_one():
    surface = np.zeros((10, 10, 10), bool)
    surface[2:8, 2:8, 2:8] = True
    surface[3:7, 3:7, 3:7] = False  # a hollow closed box
    assert fill_outside(surface)[3:7, 3:7, 3:7].all()
    surface[5, 5, 2] = False  # a hole: the fill leaks
    assert not fill_outside(surface)[4, 4, 4]


def test_pool_rules():
    grid = np.zeros((4, 4, 4), bool)
    grid[:2, :2, :2] = [[[1, 1], [1, 0]], [[1, 1], [0, 0]]]  # 5 of 8 set
    assert pool(grid, 2, "half")[0, 0, 0] and not pool(grid, 2, "half")[1, 1, 1]
    grid[2, 2, 2] = True
    assert pool(grid, 2, "any")[1, 1, 1] and not pool(grid, 2, "half")[1, 1, 1]


def test_sphere_matches_the_exact_solid(sphere):
    solid = solid_voxels(sphere.vertices, sphere.faces, 64, 256)
    assert iou(solid.coarse, _exact_sphere(64, 0.4)) > 0.97
    assert solid.sealed_voxels == 0


def test_flipped_and_duplicated_faces_do_not_matter(sphere):
    reference = solid_voxels(sphere.vertices, sphere.faces, 32, 128).coarse
    faces = sphere.faces.copy()
    faces[::3] = faces[::3, ::-1]  # a third of the faces flipped
    doubled = np.concatenate([faces, faces[:, ::-1]])  # every face back to back
    assert iou(solid_voxels(sphere.vertices, doubled, 32, 128).coarse, reference) == 1.0


@pytest.mark.parametrize("hole_radius", [0.0, 0.05])
def test_holes_are_sealed(sphere, hole_radius):
    """A watertight mesh and the same mesh with faces removed voxelise to nearly the same solid."""
    reference = solid_voxels(sphere.vertices, sphere.faces).coarse
    rng = np.random.default_rng(1)
    keep = np.ones(len(sphere.faces), bool)
    keep[rng.choice(len(keep), 6, replace=False)] = False  # a few scattered faces
    keep &= np.linalg.norm(sphere.triangles_center - [0, 0.4, 0], axis=1) >= hole_radius  # and one wide hole
    holed = solid_voxels(sphere.vertices, sphere.faces[keep])
    assert iou(holed.coarse, reference) >= 0.97
    assert holed.sealed_voxels > 0


def test_gaps_between_parts_are_not_bridged():
    """Two slabs 2 voxels apart: sealing (for leaks) must not fill the gap between them."""
    a = trimesh.creation.box((0.6, 0.1, 0.6))
    b = trimesh.creation.box((0.6, 0.1, 0.6))
    a.apply_translation((0, -0.0857, 0))
    b.apply_translation((0, 0.0857, 0))  # gap of ~0.07 = 2.2 voxels at 32^3
    mesh = trimesh.util.concatenate([a, b])
    solid = solid_voxels(mesh.vertices, mesh.faces, 32, 128, seal=2)
    assert not solid.coarse[16, 16, 16]


def test_real_watertight_mesh_with_faces_removed():
    path = shared_path("meshes", "chair", "sh3d-bscc0_foldingchair.obj")
    mesh = load_mesh(path)
    verts = normalise(mesh.vertices, mesh.faces, half_extent=0.5 - 2 / 64).apply(mesh.vertices)
    reference = solid_voxels(verts, mesh.faces).coarse
    keep = np.ones(len(mesh.faces), bool)
    keep[np.random.default_rng(0).choice(len(keep), 5, replace=False)] = False
    assert iou(solid_voxels(verts, mesh.faces[keep]).coarse, reference) >= 0.97


def test_agrees_with_reference_binvox_shell():
    """Our surface voxeliser on the binvox grid reproduces the reference 32^3 binvox shell (IoU >= 0.9)."""
    root = shared_path("reference", "binvox_pair")
    ref = read_binvox(root / "chair_model.binvox")
    mesh = load_mesh(root / "chair_model.obj")
    ours = surface_voxels(mesh.vertices, mesh.faces, ref.translate, ref.voxel_size, ref.occupancy.shape)
    assert iou(ours, ref.occupancy) >= 0.9
