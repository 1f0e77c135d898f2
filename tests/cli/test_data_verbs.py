"""The data verbs: shards build on real meshes, and verify's exit code."""

import json
import shutil

import pytest

from recon3d.cli.main import main
from tests.conftest import TINY, shared_path


def test_verify_reports_damage_with_exit_code(tiny_shards, tmp_path, capsys):

    copy = tmp_path / "copy"
    shutil.copytree(tiny_shards, copy)
    assert main(["shards", "verify", str(copy)]) == 0
    victim = sorted(copy.glob("train-*.tar"))[0]
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))
    (copy / sorted(copy.glob("val-*.tar"))[0].name).unlink()
    capsys.readouterr()
    assert main(["shards", "verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"{victim.name}: sha256 differs" in out and "missing" in out


def test_real_meshes_one_per_category(tmp_path):
    """One real mesh per category of ../shared/meshes: each becomes a sample or a named reject."""
    root = shared_path("meshes")
    src = tmp_path / "src"
    for category in sorted(p for p in root.iterdir() if p.is_dir()):
        first = sorted(p for p in category.iterdir() if p.suffix in (".obj", ".off", ".ply", ".glb"))[:1]
        for path in first:
            (src / category.name).mkdir(parents=True, exist_ok=True)
            (src / category.name / path.name).symlink_to(path)
    out = tmp_path / "out"
    assert main(["shards", "build", "-c", str(TINY), "--root", str(src), "--out", str(out), "--workers", "2",
                 "--no-progress", "geometry.voxel_resolution=32", "geometry.fine_resolution=128"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert manifest["samples"] + len(rejects) == sum(1 for _ in src.rglob("*.*"))
    assert manifest["samples"] >= 20
    assert main(["shards", "verify", str(out)]) == 0


@pytest.mark.slow
def test_all_shared_meshes_with_two_workers(tmp_path):
    """The issue's check: every shared mesh is in a shard or in rejects.jsonl; verify is clean."""
    root = shared_path("meshes")
    out = tmp_path / "out"
    assert main(["shards", "build", "--root", str(root), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    inputs = [p for p in root.rglob("*") if p.suffix.lower() in (".obj", ".off", ".ply", ".stl", ".glb", ".gltf")]
    assert manifest["samples"] + len(rejects) == len(inputs)
    assert main(["shards", "verify", str(out)]) == 0


def test_a_build_where_every_input_is_rejected_exits_1(tmp_path, capsys):
    (tmp_path / "src" / "junk").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "src" / "junk" / f"broken{i}.obj").write_text("not a mesh at all\n")
    assert main(["shards", "build", "-c", str(TINY), "--root", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no input became a sample (3 rejected; the reasons are in" in err
