"""IM-NET hdf5 files of both point layouts, made here the way each release's sampling script lays them out: the
implicit-decoder's cell indices of each set's own grid, IM-NET-pytorch's 256^3 coordinates. Both must land in the
shards as points whose values agree with the stored voxels."""

import random

import h5py
import numpy as np
import pytest
import torch

from recon3d.data import schema
from recon3d.data.loading.pipelines import decode_autoencoder, expand_batch
from recon3d.data.loading.shards import read_tar
from recon3d.data.writing.writer import build_shards
from tests.conftest import tiny_config

COUNTS = {16: 4096, 32: 1024, 64: 2048}  # 16: every cell, as both releases store it; fewer elsewhere (test speed)


def _voxels(row: int) -> np.ndarray:
    """A 64^3 solid that differs per row: a box and a ball, off-centre."""
    grid = np.indices((64, 64, 64)).transpose(1, 2, 3, 0)
    box = np.all((grid >= [10 + row, 8, 20]) & (grid < [40, 30 + 2 * row, 44]), axis=-1)
    ball = np.sum((grid - [44, 40 - row, 30]) ** 2, axis=-1) < (12 + row) ** 2
    return box | ball


def _pool(voxels: np.ndarray, res: int) -> np.ndarray:
    f = 64 // res
    return voxels.reshape(res, f, res, f, res, f).max(axis=(1, 3, 5))


def imnet_file(path, layout: str, rows: int = 3, drop=(), pixels: bool = True) -> dict:
    """Write an IM-NET hdf5 of `layout` ('resolution' or '256'); returns its arrays."""
    rng = np.random.default_rng(1)
    data = {"voxels": np.stack([_voxels(r) for r in range(rows)])[..., None].astype(np.uint8)}
    for res, count in COUNTS.items():
        points, values = [], []
        for row in range(rows):
            cells = np.stack(np.unravel_index(rng.choice(res**3, count, replace=False), (res,) * 3), axis=1)
            values.append(_pool(data["voxels"][row, ..., 0] > 0, res)[tuple(cells.T)][:, None])
            step = 256 // res
            points.append(cells if layout == "resolution" else cells * step + rng.integers(0, step, cells.shape))
        data[f"points_{res}"] = np.stack(points).astype(np.uint8)
        data[f"values_{res}"] = np.stack(values).astype(np.uint8)
    if pixels:
        data["pixels"] = rng.integers(0, 256, (rows, 2, 16, 16)).astype(np.uint8)
    with h5py.File(path, "w") as h5:
        for name, value in data.items():
            if name not in drop:
                h5.create_dataset(name, data=value)
    return data


def _build(tmp_path, src, *overrides):
    out = tmp_path / "out"
    return build_shards(tiny_config(f"source.root={src}", f"shards.out_dir={out}", "shards.split=[1,0,0]",
                                    *overrides), progress=False), out


@pytest.mark.parametrize("layout", ["resolution", "256"])
def test_both_layouts_land_as_points_that_agree_with_the_voxels(tmp_path, layout):
    src = tmp_path / f"chair_{layout}.hdf5"
    imnet_file(src, layout)
    result, out = _build(tmp_path, src, "source.hdf5_axes=zyx")
    assert result.manifest["samples"] == 3 and not result.rejects
    assert result.manifest["config"]["source"].get("hdf5_point_grid", "256") == layout
    for key, raw in read_tar(out / "train-000000.tar").items():
        voxels = schema.unpack_voxels(raw[schema.VOXELS])  # our axes (zyx of the file's)
        for res in COUNTS:
            grid = schema.point_grid(result.manifest, res)
            assert grid == (res if layout == "resolution" else 256) == schema.sample_point_grid(raw, res)
            sample = decode_autoencoder({**raw, "__key__": key}, res, 0, random.Random(0), grid)
            batch = expand_batch({k: torch.as_tensor(np.array(v))[None] for k, v in sample.items() if k != "key"})
            points, values = batch["points"][0].numpy(), batch["values"][0, :, 0].numpy()
            cells = np.floor((points + 0.5) * res).astype(int)
            expected = _pool(voxels, res)[tuple(cells.T)]
            assert np.mean(expected == values) >= 0.99
            assert points.min() < -0.35 and points.max() > 0.35  # the whole cube, not one corner of it


def test_a_stated_layout_that_the_data_contradicts_stops_the_build(tmp_path):
    paper, pytorch = tmp_path / "paper.hdf5", tmp_path / "pytorch.hdf5"
    imnet_file(paper, "resolution")
    imnet_file(pytorch, "256")
    with pytest.raises(ValueError, match=r"paper\.hdf5: source\.hdf5_point_grid=256, but every index of points_16"):
        _build(tmp_path, paper, "source.hdf5_point_grid=256")
    with pytest.raises(ValueError, match=r"pytorch\.hdf5: source\.hdf5_point_grid=resolution, but points_16"):
        _build(tmp_path, pytorch, "source.hdf5_point_grid=resolution")
    result, _ = _build(tmp_path, paper, "source.hdf5_point_grid=resolution")
    assert result.manifest["samples"] == 3


def test_both_layouts_in_one_folder_are_refused(tmp_path):
    (tmp_path / "src").mkdir()
    imnet_file(tmp_path / "src" / "a.hdf5", "resolution")
    imnet_file(tmp_path / "src" / "b.hdf5", "256")
    with pytest.raises(ValueError, match=r"both point layouts.*a\.hdf5.*b\.hdf5"):
        _build(tmp_path, tmp_path / "src")


def test_values_that_disagree_with_the_voxels_are_named(tmp_path):
    """Row 0 is read when the layout is told: a disagreement there stops the build; one in a later row that
    discovery did not read rejects that row alone."""
    src = tmp_path / "bad.hdf5"
    imnet_file(src, "256", rows=6)
    with h5py.File(src, "r+") as h5:
        h5["values_32"][0] = 1 - h5["values_32"][0]
    with pytest.raises(ValueError, match=r"bad\.hdf5: row 0: values_32 disagree with the voxels"):
        _build(tmp_path, src)
    imnet_file(src, "256", rows=6)
    with h5py.File(src, "r+") as h5:  # rows read by discovery: 0, 1, 3, 5
        h5["values_64"][2] = 1 - h5["values_64"][2]
    result, _ = _build(tmp_path, src)
    assert result.manifest["samples"] == 5
    assert [r["reason"][:41] for r in result.rejects] == ["row 2: values_64 disagree with the voxels"]


def test_hdf5_axes_permute_voxels_points_and_keep_names_and_views(tmp_path):
    src = tmp_path / "all_vox256_img_test.hdf5"
    data = imnet_file(src, "256")
    src.with_suffix(".txt").write_text("03001627/aaa\n03001627/bbb\n02691156/ccc\n")
    out = tmp_path / "out"
    result = build_shards(tiny_config(f"source.root={src}", f"shards.out_dir={out}", "source.hdf5_axes=zyx"),
                          progress=False)
    assert result.manifest["samples"] == 3 and result.manifest["splits"]["test"]["samples"] == 3
    chair = read_tar(out / "test-000000.tar")["chair/aaa"]
    voxels = schema.unpack_voxels(chair[schema.VOXELS])
    assert np.array_equal(voxels, data["voxels"][0, ..., 0].transpose(2, 1, 0) > 0)
    assert np.array_equal(schema.load_npy(chair[schema.points_member(16)]), data["points_16"][0][:, [2, 1, 0]])
    assert np.array_equal(schema.unpack_values(chair[schema.values_member(16)], 4096), data["values_16"][0, :, 0] > 0)
    assert np.array_equal(schema.view_image(chair, 1)[..., 0], data["pixels"][0, 1])


@pytest.mark.parametrize("drop, reason", [(("values_16",), "missing dataset 'values_16'"),
                                          (("points_16", "values_16", "points_32", "values_32", "points_64",
                                            "values_64"), "no points_<r> datasets")])
def test_missing_datasets_reject_each_row(tmp_path, drop, reason):
    src = tmp_path / "broken.hdf5"
    imnet_file(src, "256", drop=drop)
    result, _ = _build(tmp_path, src)
    assert result.manifest["samples"] == 0 and len(result.rejects) == 3 and reason in result.rejects[0]["reason"]


def test_a_file_without_voxels_is_rejected_at_discovery(tmp_path):
    src = tmp_path / "broken.hdf5"
    imnet_file(src, "256", drop=("voxels",))
    result, _ = _build(tmp_path, src)
    assert result.manifest["samples"] == 0 and "missing dataset 'voxels'" in result.rejects[0]["reason"]
