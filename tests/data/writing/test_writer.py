"""Writing shards: round trips, determinism, resumable and atomic writes, parts of a job array, locks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recon3d.data import schema
from recon3d.data.loading.shards import read_tar
from recon3d.data.tools.verify import verify_shards
from recon3d.data.writing.writer import build_shards
from recon3d.files import file_sha256
from tests.conftest import TINY, tiny_config


def _build(meshes, out, *extra):
    return build_shards(tiny_config(f"source.root={meshes}", f"shards.out_dir={out}", *extra), progress=False)


def test_round_trip_members_and_manifest(tiny_shards, tiny_meshes):
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert manifest["format"] == schema.FORMAT and manifest["samples"] == 12
    assert sum(s["samples"] for s in manifest["shards"]) == 12
    assert {s["split"] for s in manifest["shards"]} <= set(schema.SPLITS)
    assert manifest["config"]["geometry"]["voxel_resolution"] == 16
    for shard in manifest["shards"]:
        path = tiny_shards / f"{shard['name']}.tar"
        assert file_sha256(path) == shard["sha256"]
        for key, members in read_tar(path).items():
            meta = schema.decode_meta(members)
            assert meta["key"] == key and key.split("/")[0] in ("chair", "table", "car")
            assert schema.unpack_voxels(members[schema.VOXELS]).shape == (16, 16, 16)
            for res, count in ((8, 256), (16, 1024)):
                points = schema.load_npy(members[schema.points_member(res)])
                assert points.shape == (count, 3) and points.dtype == np.uint8
                assert schema.unpack_values(members[schema.values_member(res)], count).dtype == bool
            assert schema.view_image(members, 2).shape == (32, 32, 4)
            assert schema.load_npy(members[schema.CAMERA_RT]).shape == (3, 3, 4)
            points, normals = schema.unpack_surface(members)
            assert points.shape == normals.shape == (256, 3) and np.abs(points).max() <= 0.5
            assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-3)
    assert verify_shards(tiny_shards).ok


def test_split_is_by_key_hash_and_stable(tiny_shards):
    for shard in json.loads((tiny_shards / "manifest.json").read_text())["shards"]:
        for key in read_tar(tiny_shards / f"{shard['name']}.tar"):
            assert schema.split_by_hash(key, (0.5, 0.25, 0.25)) == shard["split"]


def test_same_bytes_with_one_or_two_workers(tiny_meshes, tmp_path):
    one = _build(tiny_meshes, tmp_path / "one", "shards.workers=1")
    two = _build(tiny_meshes, tmp_path / "two", "shards.workers=2")
    assert one.manifest == two.manifest
    assert [s["sha256"] for s in one.manifest["shards"]] == [s["sha256"] for s in two.manifest["shards"]]


def test_rerun_skips_finished_shards_and_redoes_a_damaged_one(tiny_meshes, tmp_path):
    first = _build(tiny_meshes, tmp_path)
    assert first.prepared == 12
    assert _build(tiny_meshes, tmp_path).prepared == 0
    name = first.manifest["shards"][0]["name"]
    with open(tmp_path / f"{name}.tar", "r+b") as fh:
        fh.truncate(1000)
    (tmp_path / "stray.tar.tmp").write_bytes(b"partial")
    again = _build(tiny_meshes, tmp_path)
    assert again.prepared == first.manifest["shards"][0]["samples"]
    assert again.manifest == first.manifest and not list(tmp_path.glob("*.tmp"))


def test_a_shard_another_build_is_writing_is_left_to_it(tiny_meshes, tmp_path):
    """A whole build (the array's merge job) and a rerun of one part share the folder: the temp file the other
    build holds locked is neither deleted nor written; the build finishes the rest and writes no manifest yet."""
    import fcntl

    first = _build(tiny_meshes, tmp_path / "ref")
    name = first.manifest["shards"][0]["name"]
    out = tmp_path / "out"
    out.mkdir()
    held = out / f"{name}.tar.tmp"
    with open(held, "wb") as other:
        other.write(b"in flight")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX)
        result = _build(tiny_meshes, out)
        assert held.read_bytes() == b"in flight" and not result.manifest
        assert not (out / f"{name}.tar").exists() and len(list(out.glob("*.tar"))) == len(first.manifest["shards"]) - 1
    again = _build(tiny_meshes, out)  # the other build died: its temp file is stale now, and redone
    assert again.prepared == first.manifest["shards"][0]["samples"]
    assert again.manifest["shards"] == first.manifest["shards"] and not list(out.glob("*.tmp"))


def test_changed_config_rebuilds(tiny_meshes, tmp_path):
    _build(tiny_meshes, tmp_path)
    assert _build(tiny_meshes, tmp_path, "shards.seed=7").prepared == 12


def test_kill_dash_nine_then_rerun_gives_the_same_manifest(tiny_meshes, tmp_path, launch):
    """kill -9 in the middle of a build, rerun: same manifest and shards as an uninterrupted build."""
    reference = _build(tiny_meshes, tmp_path / "reference", "shards.samples_per_shard=1")
    out = tmp_path / "killed"
    args = ["shards", "build", "-c", str(TINY), "--root", str(tiny_meshes), "--out", str(out), "--no-progress",
            "shards.samples_per_shard=1", "geometry.fine_resolution=64", "render.views=12"]
    proc = launch.recon3d_popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.json"))) < 2:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before the kill: nothing was tested"
    sidecars_before = len(list(out.glob("*-*.json")))
    rerun = launch.recon3d(*args, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"prepared {12 - sidecars_before} input(s)" in rerun.stdout  # finished shards were not redone
    fresh = _build(tiny_meshes, tmp_path / "fresh", "shards.samples_per_shard=1", "geometry.fine_resolution=64",
                   "render.views=12")
    killed_manifest = json.loads((out / "manifest.json").read_text())
    fresh_manifest = dict(fresh.manifest, source=killed_manifest["source"])
    assert killed_manifest == fresh_manifest
    assert verify_shards(out).ok and not list(out.glob("*.tmp"))
    assert reference.manifest["samples"] == killed_manifest["samples"]


def test_a_worker_killed_mid_item_rejects_that_item_and_the_build_goes_on(tiny_meshes, tmp_path, monkeypatch):
    """Simulates the OOM killer: preparing one input kills its worker process outright."""
    import recon3d.data.writing.executors as executors

    real_prepare = executors.prepare

    def deadly(item, root, cfg):
        if item.key == "chair/chair_001":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_prepare(item, root, cfg)

    monkeypatch.setattr(executors, "prepare", deadly)  # fork-started workers inherit the patch
    result = _build(tiny_meshes, tmp_path, "shards.workers=2")
    assert result.manifest["samples"] == 11
    assert [r["key"] for r in result.rejects] == ["chair/chair_001"]
    assert "worker process died" in result.rejects[0]["reason"]


def test_parts_build_disjoint_shards_and_the_last_writes_the_manifest(tiny_meshes, tmp_path):
    """Job-array parts: each writes its own shards; together they equal a one-process build, byte for byte."""
    whole = _build(tiny_meshes, tmp_path / "whole")
    cfg = tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={tmp_path / 'parts'}")
    first = build_shards(cfg, progress=False, part=(0, 2))
    assert first.manifest == {} and 0 < first.prepared < whole.prepared
    written = {p.name for p in (tmp_path / "parts").glob("*.tar")}
    again = build_shards(cfg, progress=False, part=(0, 2))  # rerunning a part is safe: nothing redone
    assert again.prepared == 0 and again.manifest == {}
    second = build_shards(cfg, progress=False, part=(1, 2))
    assert first.prepared + second.prepared == whole.prepared
    assert not written & {p.name for p in (tmp_path / "parts").glob("*.tar")} - written  # disjoint
    assert second.manifest == whole.manifest
    for tar in (tmp_path / "whole").glob("*.tar"):
        assert (tmp_path / "parts" / tar.name).read_bytes() == tar.read_bytes()
    with pytest.raises(ValueError, match="part 2/2"):
        build_shards(cfg, progress=False, part=(2, 2))


def test_parts_are_balanced_disjoint_and_cover_the_plan():
    from types import SimpleNamespace

    from recon3d.data.writing.writer import part_of

    plans = [SimpleNamespace(name=f"s{i}", items=[0] * n) for i, n in enumerate([16, 16, 16, 4, 4, 3])]
    parts = [part_of(plans, i, 3) for i in range(3)]
    names = [p.name for part in parts for p in part]
    assert sorted(names) == sorted(p.name for p in plans)  # disjoint and complete
    assert [sum(len(p.items) for p in part) for part in parts] == [20, 20, 19]
    assert part_of(plans, 1, 3) == parts[1]  # deterministic


@pytest.mark.parametrize("name", ["../outside/x", "/etc/passwd", "sub/train-000000", ".hidden", ""])
def test_manifest_shard_names_outside_the_folder_are_refused_by_every_reader(tiny_shards, tmp_path, name):
    import shutil

    from recon3d.cli.main import main
    from recon3d.data.loading.shards import load_manifest

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("latents"))
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][1]["name"] = name
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"shards\[1\] name .* is not a file name inside"):
        load_manifest(shards)
    report = verify_shards(shards)
    assert not report.ok and "is not a file name inside" in report.problems[0]
    for argv in (["shards", "show", str(shards)], ["shards", "verify", str(shards)]):
        assert main(argv) != 0


def test_a_second_build_of_the_same_part_stops_naming_the_first(tiny_meshes, tmp_path):
    import fcntl
    import socket

    from recon3d.cli.main import main

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".build-0-of-1.lock", "w") as first:  # what a running build holds
        fcntl.flock(first, fcntl.LOCK_EX)
        first.write(f"host {socket.gethostname()} pid 4242 since now\n")
        first.flush()
        with pytest.raises(ValueError, match=r"another build of part 0/1 is running \(host .* pid 4242"):
            _build(tiny_meshes, out)
        assert main(["shards", "build", "--root", str(tiny_meshes), "--out", str(out), "-c", str(TINY),
                     "--no-progress"]) == 2
        assert not list(out.glob("*.tar"))
    assert _build(tiny_meshes, out).manifest  # released: builds


def _children(pid: int) -> list:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_pool_workers_die_with_a_killed_build(tiny_meshes, tmp_path, launch):
    """kill -9 of the build's main process left its pool workers running (200 MB each, alive after 60 s)."""
    out = tmp_path / "out"
    proc = launch.recon3d_popen("shards", "build", "-c", str(TINY), "--root", str(tiny_meshes), "--out", str(out),
                                "--no-progress", "--workers", "2", "geometry.fine_resolution=64", "render.views=12",
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and len(workers) < 2:
        workers = _children(proc.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the pool never started"
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"workers {alive} outlived their build"


def test_a_dead_writers_temp_file_goes_at_once_a_live_ones_stays(tmp_path):
    """A sidecar temp file of a build killed on this host is removed by the next build at once; one whose process
    still runs (it may be a concurrent build writing) waits for the age rule."""
    import socket

    from recon3d.data.writing.writer import _clean_stale

    host = socket.gethostname().split(".")[0]
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # its pid has ended
    dead = tmp_path / f"train-000002.json.{host}.{done.pid}.tmp"
    live = tmp_path / f"train-000003.json.{host}.{os.getpid()}.tmp"
    other = tmp_path / f"train-000004.json.elsewhere.{done.pid}.tmp"
    for path in (dead, live, other):
        path.write_text("{")
    _clean_stale(tmp_path, [], [])
    assert not dead.exists() and live.exists() and other.exists()


def test_one_mesh_under_many_names_lands_in_one_split_and_verify_sees_leaks(tmp_path, monkeypatch):
    """The same file saved under 12 names in 4 categories: the build keeps them in one split; a build that did not
    (the grouping turned off) is a leakage problem for `shards verify`."""
    import trimesh

    from recon3d.data.tools.verify import verify_shards
    from recon3d.data.writing import writer
    from recon3d.data.writing.writer import build_shards
    from tests.conftest import tiny_config

    box = trimesh.exchange.obj.export_obj(trimesh.creation.box((1.0, 0.6, 0.8)))
    other = trimesh.exchange.obj.export_obj(trimesh.creation.icosphere(2))
    for i in range(12):
        path = tmp_path / "src" / f"cat{i % 4}" / f"copy{i}.obj"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(box)
    (tmp_path / "src" / "cat0" / "ball.obj").write_text(other)
    args = (f"source.root={tmp_path / 'src'}", "shards.split=[0.5,0.25,0.25]", "render.views=0")
    result = build_shards(tiny_config(*args, f"shards.out_dir={tmp_path / 'kept'}"), progress=False)
    splits = {s["split"] for s in result.manifest["shards"] if s["samples"]}
    copies = {split for split in splits if any(k.startswith("cat") and "copy" in k
                                               for k in _keys(tmp_path / "kept", split))}
    assert len(copies) == 1
    assert verify_shards(tmp_path / "kept").ok
    from recon3d.data.tools.verify import summarise

    assert len(result.manifest["identical_inputs"]) == 1 and len(result.manifest["identical_inputs"][0]) == 12
    assert "identical input files: 1 group(s) of 12 shapes, each kept in one split" in summarise(tmp_path / "kept")
    monkeypatch.setattr(writer, "identical_inputs", lambda items, root: [])  # as builds were before
    build_shards(tiny_config(*args, f"shards.out_dir={tmp_path / 'leaky'}"), progress=False)
    problems = verify_shards(tmp_path / "leaky").problems
    assert [p for p in problems if p.startswith("identical voxels in more than one split (train/test leakage)")]


def _keys(folder, split):
    import json

    return [k for side in folder.glob(f"{split}-*.json") for k in json.loads(side.read_text())["keys"]]


def _thin_walled_cup(folder):
    """An open box with walls a third of a 16^3 voxel thick, tilted off the grid's axes, as cup/a.obj."""
    import trimesh

    wall, parts = 0.02, []
    for size, at in (((wall, 1, 1), (-0.5, 0, 0)), ((wall, 1, 1), (0.5, 0, 0)), ((1, 1, wall), (0, 0, -0.5)),
                     ((1, 1, wall), (0, 0, 0.5)), ((1, wall, 1), (0, -0.5, 0))):
        parts.append(trimesh.creation.box(size).apply_translation(at))
    cup = trimesh.util.concatenate(parts).apply_transform(trimesh.transformations.rotation_matrix(0.3, (1, 1, 0)))
    (folder / "cup").mkdir(parents=True)
    cup.export(folder / "cup" / "a.obj")


def _members(out):
    return next(iter(read_tar(sorted(out.glob("*.tar"))[0]).values()))


def test_shapenet_rule_labels_points_as_its_stored_voxels(tmp_path):
    """Under geometry.voxel_rule=shapenet the point labels at the stored size are the stored voxels (not the fine
    solid max pooled), so a model learns the walls that score it; the binvox rule's voxels are thicker."""
    _thin_walled_cup(tmp_path / "in")
    _build(tmp_path / "in", tmp_path / "binvox", "geometry.voxel_rule=binvox")
    _build(tmp_path / "in", tmp_path / "shapenet", "geometry.voxel_rule=shapenet")
    thick = schema.unpack_voxels(_members(tmp_path / "binvox")[schema.VOXELS])
    members = _members(tmp_path / "shapenet")
    voxels = schema.unpack_voxels(members[schema.VOXELS])
    assert voxels.sum() < thick.sum() and (voxels & ~thick).sum() <= 0.01 * voxels.sum()
    points = schema.load_npy(members[schema.points_member(16)]).astype(int)
    values = schema.unpack_values(members[schema.values_member(16)], len(points))
    cells = points // 2  # fine 32^3, stored 16^3
    assert (voxels[tuple(cells.T)] == values).all()
    assert (thick[tuple(cells.T)] != values).any()  # the max-pooled labels would differ
