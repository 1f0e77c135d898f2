import io
import json
import logging
import math
import shutil
import tarfile

import pytest
import torch

from recon3d.data import schema
from recon3d.data.loading.datamodule import ShardDataModule


def _dm(shards, rank=None, world=None, **kwargs):
    args = dict(shards=str(shards), stage="autoencoder", batch_size=2, num_workers=0, point_resolution=16,
                shuffle_buffer=2, rank=rank, world_size=world)
    args.update(kwargs)
    dm = ShardDataModule(**args)
    dm.setup()
    return dm


def _split_keys(shards, split):
    manifest = json.loads((shards / "manifest.json").read_text())
    from recon3d.data.loading.shards import read_tar

    return sorted(k for s in manifest["shards"] if s["split"] == split
                  for k in read_tar(shards / f"{s['name']}.tar"))


def test_autoencoder_batch_shapes_and_ranges(tiny_shards):
    dm = _dm(tiny_shards)
    compact = next(iter(dm.train_dataloader()))
    assert compact["voxel_bits"].dtype == torch.uint8 and compact["voxel_bits"].shape == (2, 16, 16, 2)
    assert compact["point_index"].dtype == torch.uint8
    batch = dm.on_after_batch_transfer(compact, 0)
    assert batch["voxels"].shape == (2, 1, 16, 16, 16) and batch["voxels"].dtype == torch.float32
    assert batch["points"].shape == (2, 1024, 3) and batch["values"].shape == (2, 1024, 1)
    assert batch["points"].abs().max() < 0.5 and set(batch["values"].unique().tolist()) <= {0.0, 1.0}


def test_point_subsets_and_resolution_switch(tiny_shards):
    dm = _dm(tiny_shards, points_per_sample=100)
    dm.set_point_resolution(8)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["points"].shape == (2, 100, 3)
    with pytest.raises(ValueError, match="no point set at 64"):
        _dm(tiny_shards, point_resolution=64)


def test_image_stage_crops_and_cameras(tiny_shards):
    dm = _dm(tiny_shards, stage="image", crop_size=28, grayscale=False)
    compact = next(iter(dm.train_dataloader()))
    assert compact["image"].dtype == torch.uint8  # made float on the device
    batch = dm.on_after_batch_transfer(compact, 0)
    assert batch["image"].shape == (2, 3, 28, 28) and 0 <= batch["image"].min() <= batch["image"].max() <= 1
    assert batch["camera_k"].shape == (2, 3, 3) and batch["camera_rt"].shape == (2, 3, 4)
    val = next(iter(dm.val_dataloader()))
    k = val["camera_k"][0]
    assert k[0, 2] == pytest.approx(16 - 2) and k[0, 0] > 0  # centre crop of 32 -> 28 moves the centre by 2


def test_held_out_views_never_reach_training(tiny_shards):
    """Tiny shards carry 3 views: with one held out, training draws views 0-1 and evaluation reads view 2."""
    dm = _dm(tiny_shards, stage="image", crop_size=28, holdout_views=1, train_samples_per_epoch=40)
    seen = set()
    for batch in dm.train_dataloader():
        seen.update(batch["view"].tolist())
    assert seen == {0, 1}
    assert set(next(iter(dm.val_dataloader()))["view"].tolist()) == {2}
    with pytest.raises(ValueError, match="holdout_views=3 but the shards hold 3 views"):
        _dm(tiny_shards, stage="image", crop_size=28, holdout_views=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_train_epoch_arithmetic_per_rank_and_worker(tiny_shards, workers):
    """An epoch of N samples is ceil(N / (world x batch)) batches on every rank, whatever the worker count."""
    for world in (1, 2, 3):
        for rank in range(world):
            dm = _dm(tiny_shards, rank, world, num_workers=workers, train_samples_per_epoch=13)
            loader = dm.train_dataloader()
            batches = list(loader)
            assert len(batches) == len(loader) == math.ceil(13 / (world * 2))
            assert all(len(b["key"]) == 2 for b in batches)


def test_ranks_draw_different_samples(tiny_shards):
    keys = [sum((b["key"] for b in _dm(tiny_shards, r, 2, train_samples_per_epoch=40).train_dataloader()), [])
            for r in range(2)]
    assert keys[0] != keys[1]


@pytest.mark.parametrize("workers, world", [(0, 1), (2, 1), (0, 2), (2, 2), (2, 3)])
def test_eval_sees_every_sample_once(tiny_shards, workers, world):
    """Every sample is seen; under DDP all ranks run the same number of batches (the short ones repeat a batch, as
    DistributedSampler pads), so synced metrics never wait on a rank that has finished."""
    expected = _split_keys(tiny_shards, "val")
    seen, lengths = [], []
    for rank in range(world):
        loader = _dm(tiny_shards, rank, world, num_workers=workers).val_dataloader()
        batches = list(loader)
        assert len(batches) == len(loader) >= 1
        lengths.append(len(batches))
        seen += [k for b in batches for k in b["key"]]
    assert len(set(lengths)) == 1
    assert sorted(set(seen)) == expected
    if world == 1:
        assert sorted(seen) == expected
    assert len(seen) - len(expected) <= (world - 1) * 2 * max(1, workers)


def test_eval_with_more_slots_than_shards_and_fewer(tiny_meshes, tmp_path):
    """Shard-level split when shards >= slots, sample-level modulo otherwise: both see every sample once."""
    from recon3d.data.writing.writer import build_shards
    from tests.conftest import tiny_config

    for per_shard in (1, 12):
        out = tmp_path / str(per_shard)
        build_shards(tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={out}",
                                 f"shards.samples_per_shard={per_shard}", "shards.split=[0,1,0]"), progress=False)
        seen = [k for rank in range(2) for b in _dm(out, rank, 2, num_workers=2).val_dataloader() for k in b["key"]]
        assert sorted(set(seen)) == _split_keys(out, "val") and 12 <= len(seen) <= 12 + 2


def _rewrite(src, dst, damage):
    """Copy a shard, passing each member through damage(name, data) -> data or None (drop)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for info in tin:
            data = damage(info.name, tin.extractfile(info).read())
            if data is None:
                continue
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_corrupt_sample_is_skipped_with_a_warning(tiny_shards, tmp_path, caplog):
    shutil.copytree(tiny_shards, tmp_path / "s", dirs_exist_ok=True)
    shards = tmp_path / "s"
    name = next(s["name"] for s in json.loads((shards / "manifest.json").read_text())["shards"]
                if s["split"] == "val" and s["samples"] >= 1)
    victim = None

    def damage(member, data):
        nonlocal victim
        if member.endswith(schema.VOXELS) and victim is None:
            victim = member.split(".")[0]
            return b"not an npy file"
        return data

    _rewrite(shards / f"{name}.tar", tmp_path / "x.tar", damage)
    shutil.move(tmp_path / "x.tar", shards / f"{name}.tar")
    dm = _dm(shards, verify="off")  # the rewritten tar's size differs; this is about the sample, not the shard
    with caplog.at_level(logging.WARNING, logger="recon3d.data"):
        seen = [k for b in dm.val_dataloader() for k in b["key"]]
    expected = _split_keys(tiny_shards, "val")
    assert sorted(seen) == sorted(k for k in expected if k != victim)
    assert any(victim in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)


def test_truncated_shard_is_skipped_and_the_rest_goes_on(tiny_shards, tmp_path, caplog):
    shutil.copytree(tiny_shards, tmp_path / "s", dirs_exist_ok=True)
    shards = tmp_path / "s"
    val = [s for s in json.loads((shards / "manifest.json").read_text())["shards"] if s["split"] == "val"]
    first = shards / f"{val[0]['name']}.tar"
    with open(first, "r+b") as fh:
        fh.truncate(first.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="recon3d.data"):
        seen = [k for b in _dm(shards).val_dataloader() for k in b["key"]]
    later = [k for k in _split_keys(tiny_shards, "val") if k not in set(_split_keys_of(tiny_shards, val[0]["name"]))]
    assert set(later) <= set(seen)  # the following shards were read
    assert any("skipping" in r.getMessage() for r in caplog.records)
    from recon3d.data.tools.verify import verify_shards

    report = verify_shards(shards)
    assert not report.ok and any(val[0]["name"] in p for p in report.problems)


def _split_keys_of(shards, name):
    from recon3d.data.loading.shards import read_tar

    return list(read_tar(shards / f"{name}.tar"))


def test_contact_sheet_projections_keep_objects_upright():
    import numpy as np

    from recon3d.data.tools.contact_sheet import voxel_projection

    tall = np.zeros((8, 8, 8), bool)
    tall[3:5, 0:8, 3:5] = True  # a pole along Y
    for axis in (0, 2):
        image = voxel_projection(tall, axis)
        filled = image < 255
        assert filled.sum(axis=0).max() == 8 and filled.sum(axis=1).max() == 2  # tall and thin in the picture


def test_persistent_workers_reshuffle_every_epoch(tiny_shards):
    dm = _dm(tiny_shards, num_workers=1, train_samples_per_epoch=12, persistent_workers=True)
    loader = dm.train_dataloader()
    epochs = [[k for b in loader for k in b["key"]] for _ in range(2)]
    assert loader.persistent_workers and epochs[0] != epochs[1]


def test_a_truncated_or_missing_shard_is_skipped_with_a_warning_and_not_counted(tiny_shards, tmp_path, caplog):
    from recon3d.data.loading.shards import shard_infos

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("latents"))
    train = [s for s in json.loads((shards / "manifest.json").read_text())["shards"] if s["split"] == "train"]
    with open(shards / f"{train[0]['name']}.tar", "r+b") as fh:
        fh.truncate(1000)
    (shards / f"{train[1]['name']}.tar").unlink()
    with caplog.at_level(logging.WARNING, logger="recon3d.data"):
        infos = shard_infos(shards, "train")
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"{train[0]['name']}.tar: 1000 bytes, the manifest says" in said
    assert f"{train[1]['name']}.tar: missing" in said
    assert [i.path.rsplit("/", 1)[-1] for i in infos] == [f"{s['name']}.tar" for s in train[2:]]


def test_loader_verify_sha256_skips_a_damaged_shard_of_the_right_size(tiny_shards, tmp_path, caplog):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("latents"))
    train = [s for s in json.loads((shards / "manifest.json").read_text())["shards"] if s["split"] == "train"]
    with open(shards / f"{train[0]['name']}.tar", "r+b") as fh:  # inverted bytes in the middle, same size
        fh.seek(2000)
        data = fh.read(64)
        fh.seek(2000)
        fh.write(bytes(255 - b for b in data))
    assert len(ShardDataModule(shards=str(shards), num_workers=0).shard_infos("train")) == len(train)  # size only
    checked = ShardDataModule(shards=str(shards), num_workers=0, verify="sha256")
    with caplog.at_level(logging.WARNING, logger="recon3d.data"):
        infos = checked.shard_infos("train")
    assert len(infos) == len(train) - 1
    assert any("sha256 differs from the manifest" in r.getMessage() for r in caplog.records)
    assert len(checked._checked) == len(train) - 1  # the good ones are not hashed again next epoch


def test_an_inflated_manifest_count_is_caught_by_the_shards_own_record(tiny_shards, tmp_path, caplog):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("latents"))
    manifest = json.loads((shards / "manifest.json").read_text())
    first = next(s for s in manifest["shards"] if s["split"] == "train")
    first["samples"] *= 10  # drawn 10x too often, epoch too long
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="recon3d.data"):
        infos = ShardDataModule(shards=str(shards), num_workers=0).shard_infos("train")
    assert first["name"] not in " ".join(i.path for i in infos)
    assert any(f"the manifest says {first['samples']} samples, the shard's own record" in r.getMessage()
               for r in caplog.records)


def test_contact_sheet_shows_every_category_of_shards_written_category_by_category(tmp_path):
    """Shards hold a split's shapes in key order, so its first samples are of one or two categories; the sheet picks
    its samples from the indexes of all shards (here the only table comes 14th, after 7 cars and 6 chairs)."""
    from recon3d.data.tools.contact_sheet import contact_sheet, sheet_samples
    from recon3d.data.writing.writer import build_shards
    from recon3d.geometry.procedural import write_procedural_meshes
    from tests.conftest import tiny_config

    for category, count in (("car", 7), ("chair", 6), ("table", 1)):
        write_procedural_meshes(tmp_path / "meshes", [category], count)
    out = tmp_path / "shards"
    build_shards(tiny_config(f"source.root={tmp_path / 'meshes'}", f"shards.out_dir={out}",
                             "shards.samples_per_shard=2", "shards.split=[1.0,0.0,0.0]"), progress=False)
    picked = [key for key, _ in sheet_samples(out, 3, "train")]
    assert [key.split("/")[0] for key in picked] == ["car", "chair", "table"], picked
    assert [key for key, _ in sheet_samples(out, 4)] == ["car/car_000", "car/car_001", "chair/chair_000",
                                                          "table/table_000"]
    assert contact_sheet(out, tmp_path / "sheet.png", count=3).is_file()
