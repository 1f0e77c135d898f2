"""Shard indexes: random access that reads only the members a stage decodes, and what happens when an index is
missing, stale, truncated or lies about its tar."""

import json
import logging
import shutil

import pytest
import torch

from recon3d.data.loading.datamodule import ShardDataModule
from recon3d.data.loading.index import IndexedShard, index_path, load_index, scan_tar
from recon3d.data.loading.shards import load_manifest, read_tar
from recon3d.data.tools.verify import verify_shards
from recon3d.data.writing.writer import upgrade_shards


def _copy(tiny_shards, tmp_path, ignore=None):
    out = tmp_path / "s"
    shutil.copytree(tiny_shards, out, ignore=shutil.ignore_patterns(ignore) if ignore else None)
    return out


def _train_tar(shards):
    return next(shards / f"{s['name']}.tar" for s in load_manifest(shards)["shards"] if s["split"] == "train")


def _dm(shards, **kw):
    kw = {"batch_size": 2, "num_workers": 0, "point_resolution": 8, "rank": 0, "world_size": 1, **kw}
    dm = ShardDataModule(shards=str(shards), **kw)
    dm.setup()
    return dm


def test_the_writer_indexes_every_shard_and_reads_match_the_tar(tiny_shards):
    manifest = load_manifest(tiny_shards)
    for shard in manifest["shards"]:
        tar = tiny_shards / f"{shard['name']}.tar"
        index = load_index(tar)
        assert index == scan_tar(tar) and len(index["samples"]) == shard["samples"] and shard["index_sha256"]
        reader, whole = IndexedShard(str(tar), index), read_tar(tar)
        for i, (key, members) in enumerate(whole.items()):
            sample = reader.read(i)
            assert sample["__key__"] == key and {k: sample[k] for k in members} == members
            only = reader.read(i, lambda suffix: suffix == "meta.json")
            assert set(only) == {"__key__", "__url__", "meta.json"}


def test_batches_do_not_depend_on_the_worker_count(tiny_shards):
    def batches(workers):
        return [b for b in _dm(tiny_shards, num_workers=workers, train_samples_per_epoch=10).train_dataloader()]

    alone, two = batches(0), batches(2)
    assert [b["key"] for b in alone] == [b["key"] for b in two] and len(alone) == 5
    for a, b in zip(alone, two):  # the same augmentation too: it draws from (seed, epoch, rank, batch)
        assert all(torch.equal(a[k], b[k]) for k in a if k != "key")


def test_an_index_that_disagrees_with_its_tar_skips_the_sample_and_the_epoch_goes_on(tiny_shards, tmp_path,
                                                                                        caplog):
    shards = _copy(tiny_shards, tmp_path)
    tar = _train_tar(shards)
    index = json.loads(index_path(tar).read_text())
    victim = index["samples"][0][0]
    index["samples"][0][1]["voxels.npy"][0] += 512  # points at the next member's header
    index_path(tar).write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="recon3d.data"):
        got = [b for b in _dm(shards, train_samples_per_epoch=24).train_dataloader()]
    assert len(got) == 12 and all(len(b["key"]) == 2 for b in got)  # a stand-in keeps the batch full
    assert victim not in {k for b in got for k in b["key"]}
    assert any(victim in r.getMessage() and "disagrees" in r.getMessage() for r in caplog.records)
    report = verify_shards(shards, decode=False)
    assert any(index_path(tar).name in p for p in report.problems)


@pytest.mark.parametrize("damage", ["truncate", "other shard", "delete"])
def test_a_bad_or_missing_index_falls_back_to_streaming(tiny_shards, tmp_path, caplog, damage):
    shards = _copy(tiny_shards, tmp_path)
    tar = _train_tar(shards)
    idx = index_path(tar)
    if damage == "truncate":
        idx.write_bytes(idx.read_bytes()[:40])
    elif damage == "other shard":
        idx.write_bytes(index_path(shards / "val-000000.tar").read_bytes())
    else:
        idx.unlink()
    with caplog.at_level(logging.WARNING, logger="recon3d.data"):
        dm = _dm(shards, train_samples_per_epoch=8)
        keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 8
    if damage != "delete":
        assert any(idx.name in r.getMessage() and "stream" in r.getMessage() for r in caplog.records)
    problems = verify_shards(shards, decode=False).problems
    assert any(idx.name in p for p in problems)


def test_upgrade_indexes_an_older_shard_set_and_refuses_a_damaged_tar(tiny_shards, tmp_path):
    shards = _copy(tiny_shards, tmp_path, ignore="*.idx")
    manifest = json.loads((shards / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard.pop("index_sha256")
    (shards / "manifest.json").write_text(json.dumps(manifest))
    tar = _train_tar(shards)
    good = tar.read_bytes()
    tar.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    lines = upgrade_shards(shards)
    assert any(tar.name in line and "not indexed" in line for line in lines)
    tar.write_bytes(good)
    lines = upgrade_shards(shards)
    assert sum("indexed (" in line for line in lines) == 1 and verify_shards(shards, decode=False).ok
    assert all(index_path(shards / f"{s['name']}.tar").is_file() for s in load_manifest(shards)["shards"])
    assert _dm(shards).train_dataloader().dataset.readers is not None


def _as_format_1(src, out):
    """A copy of a shard set as format 1 wrote it: one PNG member per view, no indexes."""
    import io
    import tarfile

    from recon3d.data import schema
    from recon3d.files import file_sha256

    out.mkdir()
    manifest = load_manifest(src)
    for shard in manifest["shards"]:
        tar = out / f"{shard['name']}.tar"
        with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as dst:
            for key, members in read_tar(src / f"{shard['name']}.tar").items():
                old = {k: v for k, v in members.items() if k not in (schema.VIEWS, schema.RIGHT_VIEWS)}
                for i in range(schema.view_count(members)):
                    old[schema.view_member(i)] = schema.png_bytes(schema.view_image(members, i))
                for name in sorted(old):
                    info = tarfile.TarInfo(f"{key}.{name}")
                    info.size = len(old[name])
                    dst.addfile(info, io.BytesIO(old[name]))
        shard.update(bytes=tar.stat().st_size, sha256=file_sha256(tar))
        shard.pop("index_sha256")
    manifest["format"] = "recon3d-shards/1"
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_a_format_1_shard_set_loads_verifies_and_upgrades(tiny_shards, tmp_path):
    old = _as_format_1(tiny_shards, tmp_path / "old")
    assert verify_shards(old).ok

    def views(shards):
        dm = _dm(shards, stage="image", crop_size=28, grayscale=False)
        return [b["image"] for b in dm.val_dataloader()], dm

    new_images, _ = views(tiny_shards)
    old_images, dm = views(old)
    assert dm.train_dataloader().dataset.readers is None  # streamed
    assert all(torch.equal(a, b) for a, b in zip(new_images, old_images)) and len(old_images) == len(new_images)
    upgrade_shards(old)
    assert verify_shards(old).ok
    upgraded, dm = views(old)
    assert dm.train_dataloader().dataset.readers is not None
    assert all(torch.equal(a, b) for a, b in zip(new_images, upgraded))
