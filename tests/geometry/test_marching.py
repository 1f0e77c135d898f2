import numpy as np
import pytest
import torch
import trimesh
from skimage.measure import marching_cubes as skimage_marching_cubes

from recon3d.geometry.extract import coarse_to_fine_grid, grid_to_mesh
from recon3d.geometry.marching import EDGES, case_loops, corner_grid_mesh, marching_cubes, triangle_table
from tests.geometry.test_extract import chair_like_field, sphere_field, thin_rod_field


def _corner_grid(field, n: int) -> np.ndarray:
    return coarse_to_fine_grid(field, n, coarse=min(n, 32)).values


def _learned_grid() -> np.ndarray:
    """A random decoder's field around 0.5: a surface with many small parts and ambiguous cells."""
    from types import SimpleNamespace

    from recon3d.inference.autoencoder import decoder_field
    from recon3d.models.implicit_decoder import ImplicitDecoder

    torch.manual_seed(0)
    decoder = ImplicitDecoder(latent_dim=8, decoder_widths=[64, 64]).eval()
    with torch.no_grad():
        decoder.last.bias.fill_(0.5)
    task = SimpleNamespace(model=SimpleNamespace(decoder=decoder))
    return _corner_grid(decoder_field(task, torch.rand(8) * 0.5, torch.float32), 64)


GRIDS = {"sphere": lambda: _corner_grid(sphere_field, 64), "chair": lambda: _corner_grid(chair_like_field, 128),
         "thin rod": lambda: _corner_grid(thin_rod_field, 128), "learned": _learned_grid,
         "noise": lambda: np.random.default_rng(0).random((24, 20, 28)).astype(np.float32),
         "touching the border": lambda: np.ones((9, 9, 9), np.float32)}


def _to_surface(points: np.ndarray, mesh: trimesh.Trimesh, near: int = 16) -> np.ndarray:
    """Each point's distance to the mesh's surface: to the closest of the `near` triangles whose centroids are
    nearest it (the triangles are a cell or less across)."""
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(mesh.triangles_center).query(points, k=near)
    pairs = np.repeat(points, near, axis=0)
    closest = trimesh.triangles.closest_point(mesh.triangles[nearest.reshape(-1)], pairs)
    return np.linalg.norm(closest - pairs, axis=1).reshape(-1, near).min(axis=1)


def _hausdorff(a: trimesh.Trimesh, b: trimesh.Trimesh, samples: int = 4000) -> float:
    """Symmetric Hausdorff distance between two surfaces, from points sampled on each to the other's surface."""
    return float(max(_to_surface(a.sample(samples, seed=0), b).max(), _to_surface(b.sample(samples, seed=1), a).max()))


@pytest.mark.parametrize("name", GRIDS)
def test_the_mesh_is_scikit_images_on_the_same_grid(name):
    """Against scikit-image on the same padded grid: the same vertices (one per crossed edge) and, with Lorensen's
    table, the same vertex and face counts; the surfaces within half a cell of each other (Hausdorff distance; the
    triangles differ only within cells: how a cell's loop is fanned, and the ambiguous cells), the same orientation,
    the same enclosed volume within 0.5 % (on noise, where every cell is ambiguous, 2 % of Lorensen's), and a closed,
    consistently wound mesh."""
    grid = GRIDS[name]()
    verts, faces = corner_grid_mesh(torch.as_tensor(grid))
    cell = 1.0 / (np.asarray(grid.shape) - 1)
    theirs = {}
    for method in ("lorensen", "lewiner"):
        padded = np.pad(grid, 1, constant_values=min(float(grid.min()), -0.5))
        v, f, _, _ = skimage_marching_cubes(padded, 0.5, method=method)
        theirs[method] = ((v - 1) * cell - 0.5).astype(np.float32), f
    assert len(verts) == len(theirs["lorensen"][0]) and len(faces) == len(theirs["lorensen"][1]) > 0
    assert np.allclose(np.unique(verts.round(5), axis=0), np.unique(theirs["lorensen"][0].round(5), axis=0),
                       atol=1e-5)
    ours = trimesh.Trimesh(verts, faces, process=False)
    assert ours.is_watertight and ours.is_winding_consistent
    for method, (v, f) in theirs.items():
        other = trimesh.Trimesh(v, f, process=False)
        assert _hausdorff(ours, other) < 0.5 * cell.max()
        assert np.sign(ours.volume) == np.sign(other.volume)
        if name != "noise":
            assert abs(ours.volume - other.volume) <= 0.005 * abs(other.volume)
        elif method == "lorensen":  # noise: every cell ambiguous (Lewiner's joins differently: 14 % more volume)
            assert abs(ours.volume - other.volume) <= 0.02 * abs(other.volume)
    if name in ("sphere", "chair"):  # smooth surfaces without ambiguous cells: also Lewiner's counts
        assert len(faces) == len(theirs["lewiner"][1])


def test_the_case_table_cuts_each_crossed_edge_once():
    """Every crossed edge of every case is in exactly one loop, no other edge is; complementary cases have the
    same crossed edges; a case of one inside corner is one triangle."""
    for case in range(256):
        inside = [(case >> c) & 1 for c in range(8)]
        crossed = sorted(e for e, (a, b) in enumerate(EDGES) if inside[a] != inside[b])
        assert sorted(e for loop in case_loops(case) for e in loop) == crossed
        assert all(len(loop) >= 3 for loop in case_loops(case))
        assert sum(len(loop) - 2 for loop in case_loops(case)) * 3 == (triangle_table()[case] >= 0).sum()
    assert (triangle_table()[1] >= 0).sum() == 3 and (triangle_table()[0] < 0).all()


def test_an_empty_or_full_grid_has_no_surface_but_a_full_one_closes_at_the_border():
    empty = torch.zeros(5, 5, 5)
    verts, faces = corner_grid_mesh(empty)
    assert verts.shape == (0, 3) and faces.shape == (0, 3)
    verts, faces = corner_grid_mesh(torch.ones(5, 5, 5))
    assert len(faces) and trimesh.Trimesh(verts, faces).is_watertight
    # outside the grid counts as outside (-0.5 there): the surface a third of a cell beyond the border, as grid_to_mesh
    assert np.allclose(np.abs(verts).max(axis=0), 0.5 + 0.25 / 3, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_a_gpu_the_mesh_is_the_cpus():
    grid = torch.as_tensor(_learned_grid())
    cpu, gpu = marching_cubes(grid, 0.5), marching_cubes(grid.cuda(), 0.5)
    assert torch.equal(cpu[1], gpu[1].cpu()) and torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-5)


def test_grid_to_mesh_and_the_torch_mesh_agree_on_the_extraction_grid():
    grid = _corner_grid(chair_like_field, 128)
    verts, faces = corner_grid_mesh(torch.as_tensor(grid))
    sk_verts, sk_faces = grid_to_mesh(grid)
    assert len(verts) == len(sk_verts) and len(faces) == len(sk_faces)
    assert np.allclose(np.unique(verts.round(5), axis=0), np.unique(sk_verts.round(5), axis=0), atol=1e-5)
    assert _hausdorff(trimesh.Trimesh(verts, faces), trimesh.Trimesh(sk_verts, sk_faces)) < 0.5 / 128
