import json
from pathlib import Path
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from recon3d.cli.main import main
from tests.conftest import REPO, TINY, shared_path


DEMO_TINY = ["loader.points_per_sample=0", "loader.train_samples_per_epoch=8", "loader.holdout_views=1",
             "svr.epochs=1", "svr.base_width=4", "gan.noise_dim=8", "gan.generator_widths=[32]",
             "gan.critic_widths=[32]", "gan.epochs=1", "gan.samples_per_epoch=16", "gan.eval_samples=4",
             "gan.eval_points=64", "demo.eval_resolution=16", "demo.gan_eval_draws=2", "demo.sheet_shapes=2", "demo.interpolation_steps=3",
             "shards.split=[0.5,0.25,0.25]", "train.phase_fractions=[1,1]",
             "render.image_size=64", "loader.crop_size=48", "loader.volume_depth=8", "vrn.width=4",
             "vrn.hourglass_levels=2", "vrn.epochs=1", "stereo.widths=[4,8]", "stereo.disparity_levels=9",
             "stereo.disparity_max=8", "stereo.epochs=1"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    args = ["demo", "-c", str(TINY), "--out", str(out), "--workers", "2", "--no-progress", *DEMO_TINY]
    assert main(args) == 0
    return out, args


def test_demo_end_to_end_then_resume(tiny_demo, capsys):
    """The main job on a tiny world: every stage runs, the report holds every part, a rerun redoes nothing."""
    out, args = tiny_demo
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["meshes", "shards", "autoencoder", "latents", "svr", "gan", "vrn", "stereo", "evaluate",
                            "report"]
    assert all(info["budget_seconds"] > 0 for info in stages.values())
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    assert manifest["samples"] == 9
    for name in ("autoencoder", "svr", "gan", "vrn", "stereo"):
        assert (out / name / "checkpoints" / "last.ckpt").is_file()
        assert Path(stages[name]["checkpoint"]).is_file()  # handed on: the best by the stage's metric
    assert stages["gan"]["selected_by"] == "last" and stages["svr"]["selected_by"] == "val/iou"
    assert stages["gan"]["checkpoint"] == stages["gan"]["last_checkpoint"] != stages["svr"]["last_checkpoint"]
    for picture in ("autoencoder_sheet.png", "svr_sheet.png", "gan_samples.png", "gan_interpolation.png",
                    "vrn_sheet.png", "stereo_sheet.png"):
        with Image.open(out / "evaluation" / picture) as image:
            assert image.size[0] >= 128
    report = (out / "report.html").read_text()
    assert (out / "evaluation" / "eval_gan_test.json").is_file()  # the GAN's COV / MMD on the test split
    for part in ("Timings", "budget (s)", "Data", "Autoencoder", "Single-view", "Latent GAN", "split, per category",
                 "cov@1x", "cov min", "train shapes (ceiling)",
                 "<svg", "Configuration", "mae_shift", "vrn sheet", "stereo sheet"):
        assert part in report, part
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    capsys.readouterr()
    assert main(args) == 0  # a rerun resumes: finished stages are skipped, nothing retrained
    text = capsys.readouterr()
    assert "shards: done in an earlier run" in text.err and "report: " in text.out
    assert before == {p.name: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}


def _chromium() -> str:
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no chromium here (Debian: apt-get install chromium); .ci/run installs it")
    return found


def test_report_renders_in_headless_chromium_with_every_image(tiny_demo, tmp_path, launch):
    import re

    out, _ = tiny_demo
    assert main(["report", str(out)]) == 0  # rebuilt from the folder alone
    done = launch.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-images-loaded="(\d+)/(\d+)"', done.stdout)
    assert found, "the page's load check did not run"
    loaded, total = map(int, found.groups())
    assert total >= 6 and loaded == total  # contact sheet, 2 sheets, samples, interpolation, logged pictures
    assert done.stdout.count("<svg") >= 6  # the loss and metric plots


def test_verify_reports_damage_with_exit_code(tiny_shards, tmp_path, capsys):
    import shutil

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


def test_show_writes_a_contact_sheet(tiny_shards, tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["shards", "show", str(tiny_shards), "-o", str(out), "-n", "3"]) == 0
    with Image.open(out) as img:
        assert img.size[1] >= 3 * 32


def test_config_errors_exit_2_before_work(tmp_path, capsys):
    assert main(["shards", "build", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                 "geometry.voxel_resolutoin=32"]) == 2
    assert "did you mean 'voxel_resolution'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["shards", "build", "--root", str(tmp_path / "nope")]) == 2


def test_bench_prints_figures(tiny_shards, tiny_meshes, capsys, tmp_path):
    assert main(["bench", "shards", str(tiny_shards)]) == 0
    assert "KiB per sample" in capsys.readouterr().out
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)  # the bench writes its h5py baseline into the folder it is given
    for stage, unit in (("autoencoder", "samples/s"), ("image", "views/s")):
        assert main(["bench", "loader", str(shards), "--stage", stage, "--workers", "0,1", "--batches", "2",
                     "--batch-size", "2", "--resolution", "16", "--repeats", "1"]) == 0
        out = capsys.readouterr().out
        for line in ("h5py baseline", "recon3d num_workers=0", "recon3d num_workers=1", " alone:", " training:"):
            assert line in out
        assert out.count(unit) == 6
    assert main(["bench", "prep", str(tiny_meshes), "-c", str(TINY), "--limit", "2", "--workers", "1"]) == 0
    assert "s/mesh" in capsys.readouterr().out


def test_console_script_runs(launch):
    result = launch.recon3d("--help")
    assert result.returncode == 0 and "shards" in result.stdout


def test_import_stays_light():
    code = "import sys, recon3d, recon3d.config; print(any(m in sys.modules for m in ('torch', 'lightning', 'omegaconf')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


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


def test_train_command_end_to_end_then_resume(tiny_shards, tmp_path, capsys):
    args = ["train", "-c", str(TINY), "--shards", str(tiny_shards), "--run-dir", str(tmp_path),
            "loader.train_samples_per_epoch=4", "train.accelerator=cpu", "train.phase_epochs=[1,1]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stopped at epoch 2, step 4" in out and "last.ckpt" in out and "val/iou" in out
    assert main(args[:-1] + ["train.phase_epochs=[1,2]"]) == 0  # a longer schedule continues from last.ckpt
    assert "stopped at epoch 3, step 6" in capsys.readouterr().out


def test_version_and_python_dash_m(launch):
    from recon3d import __version__

    out = launch.recon3d("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"recon3d {__version__}"


def test_train_help_lists_every_stage_from_the_table(capsys):
    from recon3d.stages import STAGES

    for verb in ("train", "eval"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = capsys.readouterr().out
        assert all(stage in text for stage in STAGES), verb


def test_a_programming_error_is_not_passed_off_as_a_user_error(monkeypatch):
    """Only errors a user can fix become one-line messages; a KeyError from a bug keeps its traceback."""
    from recon3d.cli import data_verbs

    def broken(args):
        raise KeyError("internal")

    monkeypatch.setattr(data_verbs, "_shards_summary", broken)
    monkeypatch.setattr(data_verbs, "SHARD_VERBS", [v if v.name != "summary" else v.__class__(
        v.name, v.help, v.configure, broken) for v in data_verbs.SHARD_VERBS])
    with pytest.raises(KeyError, match="internal"):
        main(["shards", "summary", "anywhere"])


def _verb_raising(monkeypatch, error):
    from recon3d.cli import data_verbs

    def broken(args):
        raise error

    monkeypatch.setattr(data_verbs, "SHARD_VERBS", [v if v.name != "summary" else v.__class__(
        v.name, v.help, v.configure, broken) for v in data_verbs.SHARD_VERBS])


@pytest.mark.parametrize("text, says", [
    (b"train:\n  lr: 0.1\n  lr: 0.2\n", " (line 3, column 3): found duplicate key lr"),
    (b"train:\n  lr: [0.1\n", " (line 3, column 1): did not find expected ',' or ']'"),
    (b"train:\n  run_dir: \xff\xfe\n", ": not UTF-8 text (byte 18"),
])
def test_a_broken_yaml_is_one_line_naming_the_file(tmp_path, capsys, text, says):
    (tmp_path / "bad.yaml").write_bytes(text)
    assert main(["train", "-c", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"bad.yaml{says}" in err


def test_a_full_disk_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import errno

    _verb_raising(monkeypatch, OSError(errno.ENOSPC, "No space left on device", "/scratch/shards/train-000003.tar"))
    assert main(["shards", "summary", "anywhere"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device: /scratch/shards/train-000003.tar" in err
    with pytest.raises(OSError):
        main(["shards", "summary", "anywhere", "--debug"])
    monkeypatch.setenv("RECON3D_DEBUG", "1")
    with pytest.raises(OSError):
        main(["shards", "summary", "anywhere"])


def test_show_skips_a_sample_it_cannot_draw(tiny_shards, tmp_path, capsys):
    import io
    import json
    import shutil
    import tarfile

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("latents"))
    first = json.loads((shards / "manifest.json").read_text())["shards"][0]["name"]
    path = shards / f"{first}.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    broken = next(m.name for m, _ in members if m.name.endswith(".views.zlib"))
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            data = b"not views" if info.name == broken else data
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert main(["shards", "show", str(shards), "-o", str(tmp_path / "sheet.png")]) == 0
    assert "cannot be drawn" in capsys.readouterr().err and (tmp_path / "sheet.png").is_file()


def test_demo_on_a_folder_of_unusable_meshes_says_so_in_one_line(tmp_path, capsys):
    (tmp_path / "m" / "chair").mkdir(parents=True)
    (tmp_path / "m" / "chair" / "a.obj").write_text("garbage\n")
    (tmp_path / "m" / "chair" / "b.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 3\n")
    capsys.readouterr()
    assert main(["demo", "-c", str(TINY), "--meshes", str(tmp_path / "m"), "--out", str(tmp_path / "run"),
                 "--no-progress", "train.phase_fractions=[1,1]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no shape to train on" in err and "2 input(s) rejected" in err and "rejects.jsonl" in err
