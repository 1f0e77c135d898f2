"""The main job end to end on a tiny world: every stage, the report (rendered in headless Chromium), a resume that
redoes nothing, and a folder of unusable meshes."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from recon3d.cli.main import main
from tests.conftest import TINY

DEMO_TINY = ["loader.points_per_sample=0", "loader.train_samples_per_epoch=8", "loader.holdout_views=1",
             "svr.epochs=1", "svr.base_width=4", "gan.noise_dim=8", "gan.generator_widths=[32]",
             "gan.critic_widths=[32]", "gan.epochs=1", "gan.samples_per_epoch=16", "gan.eval_samples=4",
             "gan.eval_points=64", "demo.eval_resolution=16", "demo.gan_eval_draws=2", "demo.sheet_shapes=2",
             "demo.interpolation_steps=3",
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
                 "<svg", "Configuration", "mae_shift", "vrn sheet", "stereo sheet", "demo profile: <b>cpu</b>"):
        assert part in report, part
    assert json.loads((out / "config.json").read_text())["demo"]["profile"] == "cpu"  # no GPU here
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    capsys.readouterr()
    assert main(args) == 0  # a rerun resumes: finished stages are skipped, nothing retrained
    text = capsys.readouterr()
    assert "shards: done in an earlier run" in text.err and "report: " in text.out
    assert before == {p.name: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}


def test_a_finished_demo_does_not_resume_on_other_meshes(tiny_demo, tmp_path, capsys):
    out, args = tiny_demo
    (tmp_path / "other" / "chair").mkdir(parents=True)
    capsys.readouterr()
    assert main([*args, "--meshes", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"was made from {out / 'meshes'}" in err[0] and "give another --out" in err[0]


def _chromium() -> str:

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


def test_demo_on_a_folder_of_unusable_meshes_says_so_in_one_line(tmp_path, capsys):
    (tmp_path / "m" / "chair").mkdir(parents=True)
    (tmp_path / "m" / "chair" / "a.obj").write_text("garbage\n")
    (tmp_path / "m" / "chair" / "b.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 3\n")
    capsys.readouterr()
    assert main(["demo", "-c", str(TINY), "--meshes", str(tmp_path / "m"), "--out", str(tmp_path / "run"),
                 "--no-progress", "train.phase_fractions=[1,1]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no shape to train on" in err and "2 input(s) rejected" in err and "rejects.jsonl" in err


def test_the_gpu_profile_applies_where_cuda_is_and_the_cpu_demo_is_unchanged():
    from recon3d.config import load_config, to_dict
    from recon3d.workflows.demo import DEFAULTS, demo_config

    cpu = demo_config(cuda_available=False)
    plain = to_dict(load_config([DEFAULTS]))
    plain["demo"]["profile"] = "cpu"
    assert to_dict(cpu) == plain  # the CPU demo is demo.yaml as it was
    gpu = demo_config(cuda_available=True)
    assert gpu.demo.profile == "gpu" and list(gpu.model.decoder_widths) == [1024, 1024, 1024, 512, 256, 128]
    assert (gpu.model.latent_dim, gpu.loader.batch_size, gpu.loader.points_per_sample) == (256, 32, 4096)
    assert gpu.svr.base_width == 64 and gpu.demo.minutes == cpu.demo.minutes and gpu.demo.shares == cpu.demo.shares
    assert demo_config(overrides=["demo.profile=cpu"], cuda_available=True).demo.profile == "cpu"
    assert demo_config(overrides=["train.accelerator=cpu"], cuda_available=True).demo.profile == "cpu"
    forced = demo_config(overrides=["demo.profile=gpu", "loader.batch_size=8"], cuda_available=False)
    assert forced.demo.profile == "gpu" and forced.loader.batch_size == 8  # the user's overrides come last
