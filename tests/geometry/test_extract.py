import numpy as np
import pytest
import torch

from recon3d.geometry.extract import coarse_to_fine_grid, coarse_to_fine_grids, dense_grid, grid_to_mesh
from recon3d.geometry.voxelize import iou


def chair_like_field(points: torch.Tensor) -> torch.Tensor:
    """Union of boxes with thin legs: occupancy 1 inside, 0 outside (sharp, like a trained decoder)."""
    boxes = [((-0.3, -0.05, -0.3), (0.3, 0.02, 0.3)), ((-0.3, 0.02, 0.25), (0.3, 0.45, 0.3))]
    for sx in (-0.28, 0.25):
        for sz in (-0.28, 0.25):
            boxes.append(((sx, -0.45, sz), (sx + 0.03, -0.05, sz + 0.03)))
    inside = torch.zeros(len(points), dtype=torch.bool)
    for lo, hi in boxes:
        inside |= ((points >= torch.tensor(lo)) & (points <= torch.tensor(hi))).all(-1)
    return inside.float()


def thin_rod_field(points: torch.Tensor) -> torch.Tensor:
    """A smooth rod of radius 0.012 along y at (x, z) = (0.01, 0.013): between the corners of a 32^3 frame, where
    the field stays below 0.5, like the thin parts of a learned decoder."""
    distance = torch.sqrt((points[:, 0] - 0.01) ** 2 + (points[:, 2] - 0.013) ** 2)
    return torch.sigmoid(200 * (0.012 - distance)) * (points[:, 1].abs() < 0.4)


def sphere_field(points: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(40 * (0.35 - points.norm(dim=-1)))


@pytest.mark.parametrize("field, resolution, coarse", [(sphere_field, 128, 32), (chair_like_field, 128, 16),
                                                       (chair_like_field, 256, 32), (thin_rod_field, 128, 32)])
def test_coarse_to_fine_matches_dense_with_far_fewer_points(field, resolution, coarse):
    dense = dense_grid(field, resolution, batch_points=1 << 20)
    fast = coarse_to_fine_grid(field, resolution, coarse=coarse, batch_points=1 << 20)
    assert iou(fast.values > 0.5, dense.values > 0.5) >= 0.99
    assert fast.evaluated < 0.25 * dense.evaluated


def test_mesh_of_a_sphere_has_the_right_radius():
    grid = coarse_to_fine_grid(sphere_field, 64, coarse=16)
    verts, faces = grid_to_mesh(grid.values)
    radius = np.linalg.norm(verts, axis=1)
    assert len(faces) > 1000 and abs(radius.mean() - 0.35) < 0.01


def test_empty_field_gives_an_empty_mesh():
    grid = dense_grid(lambda p: torch.zeros(len(p)), 16)
    verts, faces = grid_to_mesh(grid.values)
    assert verts.shape == (0, 3) and faces.shape == (0, 3)


def test_resolution_must_be_a_multiple_of_the_frame():
    with pytest.raises(ValueError, match="power of two"):
        coarse_to_fine_grid(sphere_field, 100, coarse=32)


def test_without_the_band_a_thin_rod_would_be_lost():
    assert dense_grid(thin_rod_field, 32).values.max() < 0.5 < dense_grid(thin_rod_field, 128).values.max()
    missed = coarse_to_fine_grid(thin_rod_field, 128, coarse=32, band=0.0)
    assert (missed.values > 0.5).sum() == 0


def test_tracing_keeps_thin_legs_without_a_band():
    # legs 0.03 wide off a seat, a 16^3 frame and no band: the traced levels keep them
    dense = dense_grid(chair_like_field, 128, batch_points=1 << 20)
    traced = coarse_to_fine_grid(chair_like_field, 128, coarse=16, band=0.0, batch_points=1 << 20)
    assert iou(traced.values > 0.5, dense.values > 0.5) >= 0.99


def test_bf16_extraction_agrees_with_fp32():
    from types import SimpleNamespace

    from recon3d.inference.autoencoder import decoder_field
    from recon3d.models.implicit_decoder import ImplicitDecoder

    torch.manual_seed(0)
    decoder = ImplicitDecoder(latent_dim=8, decoder_widths=[64, 64]).eval()
    with torch.no_grad():  # a decoder whose surface is a sphere-like blob: 0.5 + 0.3 - |p| through its last layer
        decoder.last.bias.fill_(0.5)
    task = SimpleNamespace(model=SimpleNamespace(decoder=decoder))
    z = torch.rand(8)
    fields = {dtype: decoder_field(task, z, dtype) for dtype in (torch.float32, torch.bfloat16)}
    grids = {dtype: coarse_to_fine_grid(field, 64, coarse=16).values > 0.5 for dtype, field in fields.items()}
    assert grids[torch.float32].any() and not grids[torch.float32].all()
    assert iou(grids[torch.bfloat16], grids[torch.float32]) >= 0.99


def test_an_extraction_without_room_is_refused_before_allocating(monkeypatch):
    import pytest

    from recon3d.geometry import extract

    monkeypatch.setattr(extract, "available_memory", lambda device: 2**30)  # a machine with 1 GiB free
    extract.check_memory(256)  # 0.16 GiB: goes ahead
    with pytest.raises(ValueError, match=r"resolution 1024: an extraction needs about 10.0 GiB, 1.0 GiB are"):
        extract.coarse_to_fine_grid(lambda points: points[:, 0], 1024)
    monkeypatch.setattr(extract, "available_memory", lambda device: 0)  # unknown: nothing refused for it
    extract.check_memory(4096)


def test_many_shapes_at_once_are_each_the_grid_of_one_at_a_time():
    """Batched extraction: three spheres, the chair and an empty shape in one run give each shape its own run's
    points and occupancy, and its grid to the last bit of the interpolation's rounding (the batched upsampling may
    round differently), though all five shapes' points share the field's calls."""
    radii = torch.tensor([0.2, 0.3, 0.42, 0.0, 0.0])
    calls = []

    def field(points, shape):
        calls.append(shape.unique().tolist())
        values = torch.sigmoid(40 * (radii[shape] - points.norm(dim=-1)))
        values[shape == 3] = chair_like_field(points[shape == 3])
        values[shape == 4] = 0.0
        return values

    many = coarse_to_fine_grids(field, 5, 128, coarse=16, batch_points=1 << 20)
    assert any(len(shapes) > 1 for shapes in calls)
    for b, grid in enumerate(many):
        one = coarse_to_fine_grid(lambda p: field(p, torch.full((len(p),), b)), 128, coarse=16, batch_points=1000)
        assert grid.evaluated == one.evaluated
        assert np.array_equal(grid.values > 0.5, one.values > 0.5)
        np.testing.assert_allclose(grid.values, one.values, rtol=1e-6, atol=1e-9)
    assert len({grid.evaluated for grid in many[:4]}) == 4 and many[4].values.max() == 0.0
    assert many[4].evaluated == 17 ** 3  # the empty shape: its frame only


def test_tracing_around_new_corners_finds_what_the_whole_grid_finds(monkeypatch):
    """The tracing's rounds look at the cells around the corners just evaluated, or at the whole grid when that
    costs less memory: both give the same grid and points."""
    from recon3d.geometry import extract

    sparse = coarse_to_fine_grid(chair_like_field, 128, coarse=16, band=0.0, batch_points=1 << 20)
    monkeypatch.setattr(extract, "SPARSE_BYTES_PER_CORNER", 10 ** 9)  # every round over the whole grid
    whole = coarse_to_fine_grid(chair_like_field, 128, coarse=16, band=0.0, batch_points=1 << 20)
    assert whole.evaluated == sparse.evaluated and np.array_equal(whole.values, sparse.values)
