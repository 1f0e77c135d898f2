"""DeepSpeed for real, on CPU ranks over gloo: ZeRO-2 and ZeRO-3 train like DDP, their checkpoint folders feed every
command that takes a checkpoint, resume continues from them, and bad DeepSpeed JSONs stop before any process starts."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from recon3d.errors import ConfigError
from tests.conftest import REPO, TINY, tiny_config

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")


def _train(launch, shards, run_dir, *extra, timeout=300):
    done = launch.recon3d("train", "-c", str(TINY), "--shards", str(shards), "--run-dir", str(run_dir),
                          "train.accelerator=cpu", "train.devices=2", *extra, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def _figures(out):
    step = re.search(r"stopped at epoch (\d+), step (\d+)", out).groups()
    losses = {k: float(v) for k, v in re.findall(r"(train/loss|val/loss) = ([0-9.]+)", out)}
    return step, losses


@pytest.fixture(scope="module")
def zero_runs(tiny_shards, tmp_path_factory, launch):
    """The same 2-rank autoencoder run under DDP, ZeRO-2 and ZeRO-3 (fp32)."""
    runs = {}
    for strategy in ("ddp", "deepspeed_stage_2", "deepspeed_stage_3"):
        run_dir = tmp_path_factory.mktemp(strategy)
        runs[strategy] = (run_dir, _train(launch, tiny_shards, run_dir, f"train.strategy={strategy}",
                                          "train.phase_epochs=[2,1]"))
    return runs


def test_zero_stages_train_like_ddp(zero_runs):
    """Both ranks step: the same step count as DDP, and the same losses (ZeRO shards state, not the arithmetic)."""
    ddp_step, ddp_losses = _figures(zero_runs["ddp"][1])
    for strategy in ("deepspeed_stage_2", "deepspeed_stage_3"):
        run_dir, out = zero_runs[strategy]
        step, losses = _figures(out)
        assert step == ddp_step, strategy
        for key, value in ddp_losses.items():
            assert losses[key] == pytest.approx(value, rel=1e-3, abs=1e-4), (strategy, key)
        folder = run_dir / "checkpoints" / "last.ckpt"
        assert (folder / "latest").is_file() and len(list(folder.glob("*/zero_pp_rank_*_optim_states.pt"))) == 2
        assert f"last checkpoint: {run_dir / 'checkpoints' / 'last.fp32.ckpt'}" in out


def test_zero_checkpoints_load_everywhere(zero_runs, tiny_shards, tmp_path, launch):
    """The consolidated file reloads with weights_only; a folder works wherever a checkpoint is taken."""
    import torch

    from recon3d.cli.main import main
    from recon3d.tasks.checkpoints import load_checkpoint

    run_dir = zero_runs["deepspeed_stage_3"][0]
    (run_dir / "checkpoints" / "last.fp32.ckpt").unlink()  # made again by the command
    assert main(["checkpoint", "consolidate", str(run_dir / "checkpoints" / "last.ckpt")]) == 0
    state = torch.load(run_dir / "checkpoints" / "last.fp32.ckpt", weights_only=True, map_location="cpu")
    task = load_checkpoint(run_dir / "checkpoints" / "last.ckpt", expect="autoencoder")
    assert {k: v.shape for k, v in task.state_dict().items()} == {k: v.shape for k, v in state["state_dict"].items()}
    # an image encoder trained on top of a ZeRO-2 autoencoder folder, after export-latents read that folder
    folder = zero_runs["deepspeed_stage_2"][0] / "checkpoints" / "last.ckpt"
    assert main(["export-latents", "--ckpt", str(folder), "--shards", str(tiny_shards), "--device", "cpu"]) == 0
    assert (tiny_shards / "latents" / zero_runs["deepspeed_stage_2"][0].name / "train.npy").is_file()
    out = _train(launch, tiny_shards, tmp_path / "svr", "train.stage=svr", f"svr.autoencoder_ckpt={folder}",
                 "train.devices=1", "svr.epochs=1", "svr.base_width=4")
    assert "stopped at epoch 1" in out


def test_resume_continues_from_the_zero_folder(zero_runs, tiny_shards, tmp_path, launch):
    import shutil

    run_dir = tmp_path / "resumed"
    shutil.copytree(zero_runs["deepspeed_stage_2"][0], run_dir)
    (step_epoch, step), _ = _figures(zero_runs["deepspeed_stage_2"][1])
    out = _train(launch, tiny_shards, run_dir, "train.strategy=deepspeed_stage_2", "train.phase_epochs=[2,2]")
    assert _figures(out)[0] == (str(int(step_epoch) + 1), str(int(step) + int(step) // int(step_epoch)))


def _bad(tmp_path, content, *extra):
    path = tmp_path / "ds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    from recon3d.training.deepspeed import deepspeed_config

    return lambda: deepspeed_config(tiny_config(f"train.deepspeed_config={path}", *extra))


@pytest.mark.parametrize("content, message", [
    ({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4}, "gradient_accumulation_steps.*"
                                                                            "train.accumulate_grad_batches"),
    ({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}, "train_micro_batch_size_per_gpu"
                                                                                    " is \"auto\""),
    ({"zero_optimization": {"stage": 3}}, "stage is 3 but train.strategy=deepspeed_stage_2"),
    ({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}, "'bf16'.*train.precision"),
    ('{"zero_optimization": {"stage": 2', "not valid JSON"),
    ({"zero_optimization": {"stage": 5}}, "zero_optimization.stage must be"),
])
def test_bad_deepspeed_json_is_refused_naming_file_and_key(tmp_path, content, message):
    with pytest.raises(ConfigError, match=message) as err:
        _bad(tmp_path, content, "train.strategy=deepspeed_stage_2")()
    assert str(tmp_path / "ds.json") in str(err.value)


def test_recon3d_fills_what_it_decides(tmp_path):
    from recon3d.training.deepspeed import deepspeed_config

    config = _bad(tmp_path, {"zero_optimization": {"stage": 3}}, "train.strategy=deepspeed_stage_3",
                  "loader.batch_size=5")()
    assert config["train_micro_batch_size_per_gpu"] == 5 and config["zero_optimization"]["stage"] == 3
    for name in ("zero2", "zero3"):  # the shipped JSONs pass their own strategy
        stage = name[-1]
        deepspeed_config(tiny_config(f"train.deepspeed_config={REPO / 'configs' / 'deepspeed' / (name + '.json')}",
                                     f"train.strategy=deepspeed_stage_{stage}"))


def test_a_half_written_zero_folder_is_refused(tmp_path):
    from recon3d.tasks.checkpoints import read_checkpoint

    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    (folder / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"\x80\x02truncated")
    with pytest.raises(ValueError, match=str(folder)):
        read_checkpoint(folder)
    with pytest.raises(ValueError, match="not a DeepSpeed checkpoint folder"):
        read_checkpoint(tmp_path)


def test_bench_compares_strategies_side_by_side(launch):
    done = launch.recon3d("bench", "train-step", "-c", str(TINY), "--strategy", "ddp,deepspeed_stage_2", "--devices",
                          "2", "--batch-size", "2", "--points", "256", "--batches", "3", "--warmup", "1", "--device",
                          "cpu", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"ddp", "deepspeed_stage_2"}, done.stdout
    for strategy, figures in rows.items():  # step ms, samples/s, peak MiB per rank, checkpoint MiB: all measured
        assert len(figures) == 4 and all(float(f) > 0 for f in figures), (strategy, figures)


def test_kill_9_mid_run_then_resume_from_the_zero_folder(tiny_shards, tmp_path, launch):
    """Both ranks killed at once after a few step checkpoints: the rerun resumes from the folder and ends at the
    schedule's last step (nothing done twice, nothing lost)."""
    import os
    import signal
    import time

    extra = ["train.strategy=deepspeed_stage_2", "train.phase_epochs=[6,6]", "train.checkpoint_every_steps=2"]
    proc = launch.recon3d_popen("train", "-c", str(TINY), "--shards", str(tiny_shards), "--run-dir", str(tmp_path),
                                "train.accelerator=cpu", "train.devices=2", *extra, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    latest = tmp_path / "checkpoints" / "last.ckpt" / "latest"
    deadline = time.time() + 240
    while not latest.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None, "the run ended before it could be killed: lengthen the schedule"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = _train(launch, tiny_shards, tmp_path, *extra)
    assert _figures(out)[0] == ("12", "24")


@pytest.mark.parametrize("stage", ["vrn", "stereo"])
def test_view_stages_train_under_zero2(stereo_shards, tmp_path, stage, launch):
    """The other one-optimiser stages start and checkpoint under ZeRO-2 on 2 ranks; their folder loads as that stage."""
    from recon3d.tasks.checkpoints import load_checkpoint
    from tests.conftest import STEREO_TINY, VRN_TINY

    extra = VRN_TINY if stage == "vrn" else STEREO_TINY
    out = _train(launch, stereo_shards, tmp_path, *extra, "train.strategy=deepspeed_stage_2",
                 "loader.train_samples_per_epoch=8")
    assert "stopped at epoch 1" in out
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt", expect=stage).stage == stage


def test_bf16_and_gradient_accumulation_reach_deepspeed(tiny_shards, tmp_path, launch):
    """train.precision and train.accumulate_grad_batches end up in the engine's config (recorded in the checkpoint):
    8 batches per rank with 2 accumulated are 4 optimiser steps. (16-mixed needs a GPU: DeepSpeed's CPU accelerator
    refuses fp16.)"""
    from recon3d.tasks.checkpoints import read_checkpoint

    out = _train(launch, tiny_shards, tmp_path, "train.strategy=deepspeed_stage_2", "train.precision=bf16-mixed",
                 "train.accumulate_grad_batches=2", "train.phase_epochs=[2,2]")
    assert _figures(out)[0] == ("4", "4")
    ds = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["ds_config"]
    assert ds["gradient_accumulation_steps"] == 2 and ds["bf16"] == {"enabled": True}
    assert ds["train_micro_batch_size_per_gpu"] == 2  # loader.batch_size of the tiny config
