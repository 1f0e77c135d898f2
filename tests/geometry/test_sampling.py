import numpy as np
import pytest
import trimesh

from recon3d.geometry.sampling import choose_cells, edge_cells, point_positions, sample_points
from recon3d.geometry.voxelize import pool, solid_voxels


@pytest.fixture(scope="module")
def fine():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.35)
    return solid_voxels(mesh.vertices, mesh.faces, 32, 128).fine


def test_edge_cells_against_a_naive_window_scan():
    rng = np.random.default_rng(0)
    cells = rng.random((9, 9, 9)) < 0.1
    edge = edge_cells(cells, 3)
    for i, j, k in np.ndindex(cells.shape):
        window = cells[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2]
        assert edge[i, j, k] == (window.any() and not window.all())


@pytest.mark.parametrize("res, count", [(8, 512), (16, 1024), (32, 8192)])
def test_exact_counts_distinct_cells_and_exact_labels(fine, res, count):
    points = sample_points(fine, res, count, np.random.default_rng(0), window=7)
    assert points.indices.shape == (count, 3) and points.values.shape == (count,)
    block = fine.shape[0] // res
    cells = points.indices.astype(int) // block
    assert len(np.unique(cells, axis=0)) == count  # one point per chosen cell
    assert (fine[tuple(points.indices.astype(int).T)] == points.values).all()  # labels exact on the fine grid
    assert (pool(fine, block, "any")[tuple(cells.T)] == points.values).all()


def test_deterministic_for_a_seed_and_different_across_seeds(fine):
    a = sample_points(fine, 32, 4096, np.random.default_rng(3))
    b = sample_points(fine, 32, 4096, np.random.default_rng(3))
    c = sample_points(fine, 32, 4096, np.random.default_rng(4))
    assert np.array_equal(a.indices, b.indices) and not np.array_equal(a.indices, c.indices)


def test_near_surface_emphasis():
    """When the edge cells fit (stage 1), every one of them is taken: points concentrate at the surface."""
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.2)
    fine = solid_voxels(mesh.vertices, mesh.faces, 32, 128).fine
    cells = pool(fine, 4, "any")
    edge = edge_cells(cells, 3)
    points = sample_points(fine, 32, 4096, np.random.default_rng(0), window=3)
    assert points.stage == 1 and edge.sum() <= 4096
    chosen = np.zeros_like(edge)
    chosen[tuple((points.indices.astype(int) // 4).T)] = True
    assert (chosen >= edge).all()
    assert chosen[edge].sum() / 4096 > 5 * edge.mean()


def test_three_stages():
    rng = np.random.default_rng(0)
    edge = np.zeros((8, 8, 8), bool)
    edge[:, :, :3] = True  # 192 edge cells, 32 of them even-indexed
    assert choose_cells(edge, 200, rng)[1] == 1
    cells, stage = choose_cells(edge, 100, rng)
    assert stage == 2 and len(cells) == 100 and len(np.unique(cells)) == 100
    ijk = np.stack(np.unravel_index(cells[:32], edge.shape), 1)
    assert (ijk % 2 == 0).all()
    cells, stage = choose_cells(edge, 20, rng)
    assert stage == 3 and len(np.unique(cells)) == 20


def test_positions_follow_imnet_convention():
    np.testing.assert_allclose(point_positions(np.array([[0, 255, 128]], np.uint8), 256),
                               [[0.5 / 256 - 0.5, 255.5 / 256 - 0.5, 128.5 / 256 - 0.5]])


def test_thin_parts_survive_at_coarse_resolutions():
    """A leg one fine voxel thick is occupied at 16^3 (IM-NET's max pooling); a majority rule would erase it."""
    fine = np.zeros((64, 64, 64), bool)
    fine[30, 10:50, 30] = True  # a 1-voxel pole
    points = sample_points(fine, 16, 4096, np.random.default_rng(0))
    assert points.values.sum() == 11  # y = 10..49 crosses cells 2..12
    assert fine[tuple(points.indices[points.values].astype(int).T)].all()


def test_given_cells_label_the_points(fine):
    """Labels from a grid of one's own (here the max-pooled cells eroded): each point carries its cell's value and
    lies in a fine voxel of that value wherever its cell has one."""
    from scipy import ndimage

    cells = ndimage.binary_erosion(pool(fine, 4, "any"))
    points = sample_points(fine, fine.shape[0] // 4, 512, np.random.default_rng(0), window=7, cells=cells)
    index = points.indices.astype(int)
    assert (cells[tuple((index // 4).T)] == points.values).all()
    assert (fine[tuple(index.T)] == points.values).mean() > 0.99
    with pytest.raises(ValueError, match="not the"):
        sample_points(fine, fine.shape[0] // 4, 16, np.random.default_rng(0), cells=cells[1:])
