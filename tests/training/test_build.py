"""The Trainer a run gets: recon3d's own settings, then train.trainer's (checked against Lightning's Trainer before
any work), and sync_batchnorm where BatchNorm meets several GPUs."""

import pytest
import torch

from recon3d.errors import ConfigError
from recon3d.training.build import build_trainer, sync_batchnorm_default, trainer_settings
from recon3d.training.run import run
from tests.conftest import tiny_config


def test_trainer_settings_reach_the_trainer(tmp_path):
    cfg = tiny_config(f"train.run_dir={tmp_path}", "train.accelerator=cpu", "train.logger=csv",
                      "train.trainer={gradient_clip_val: 0.5, deterministic: true, limit_val_batches: 2}",
                      "train.trainer.val_check_interval=0.5")
    assert trainer_settings(cfg) == {"gradient_clip_val": 0.5, "deterministic": True, "limit_val_batches": 2,
                                     "val_check_interval": 0.5}
    trainer = build_trainer(cfg, enable_wandb=False)
    assert trainer.gradient_clip_val == 0.5 and trainer.limit_val_batches == 2 and trainer.val_check_interval == 0.5


@pytest.mark.parametrize("setting, message", [
    ("train.trainer.gradiant_clip_val=1.0", "train.trainer.gradiant_clip_val: not a setting of Lightning's Trainer "
                                            r"[\d.]+ \(did you mean 'gradient_clip_val'\?\)"),
    ("train.trainer.precision=16-mixed", "train.trainer.precision: recon3d sets it from train.precision"),
    ("train.trainer.max_epochs=3", r"train.trainer.max_epochs: recon3d sets it from the stage's epochs")])
def test_a_wrong_key_stops_the_run_before_any_work(tmp_path, setting, message):
    cfg = tiny_config(f"train.run_dir={tmp_path / 'run'}", "train.accelerator=cpu", "loader.shards=/nonexistent",
                      setting)
    with pytest.raises(ConfigError, match=message):
        run(cfg, enable_wandb=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_sync_batchnorm_where_batchnorm_meets_several_gpus():
    with_bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    without = torch.nn.Sequential(torch.nn.Linear(2, 2))
    two = tiny_config("train.devices=2")
    assert sync_batchnorm_default(two, with_bn, on_gpu=True)
    assert not sync_batchnorm_default(two, without, on_gpu=True)
    assert not sync_batchnorm_default(tiny_config(), with_bn, on_gpu=True)  # one device: nothing to synchronise
    assert not sync_batchnorm_default(two, with_bn, on_gpu=False)  # torch's SyncBatchNorm is CUDA-only
    assert sync_batchnorm_default(tiny_config("train.num_nodes=2"), with_bn, on_gpu=True)


def test_the_offline_upload_command_is_the_installed_wandbs_and_takes_its_arguments(tmp_path, monkeypatch, capfd):
    """Two offline segments of one run, as a restarted run leaves them: the printed command names beta sync --id
    (W&B's command for resumed fragments of one run) and the installed wandb accepts it (its dry run lists both)."""
    import glob
    import shlex

    import wandb
    from click.testing import CliRunner
    from wandb.cli.cli import cli

    from recon3d.training.build import wandb_upload_command

    assert wandb_upload_command(tmp_path) == ""  # no segments, no line
    (tmp_path / "wandb_id.txt").write_text("abc123def456")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for step in range(2):
        run = wandb.init(project="recon3d", id="abc123def456", dir=str(tmp_path), mode="offline", resume="allow")
        run.log({"x": step}, step=step)
        run.finish()
    command = wandb_upload_command(tmp_path)
    assert command == f"wandb beta sync --id abc123def456 {tmp_path}/wandb/offline-run-*"
    words = shlex.split(command)
    paths = sorted(glob.glob(words[-1]))
    assert len(paths) == 2
    capfd.readouterr()
    result = CliRunner().invoke(cli, [*words[1:-1], "--dry-run", *paths])
    said = result.output + "".join(capfd.readouterr())
    assert result.exit_code == 0, said
    if said.strip():  # wandb's terminal log is off once another test has set wandb up silent
        assert said.count("run-abc123def456.wandb") == 2 and "Would sync 2 run(s)" in said
    refused = CliRunner().invoke(cli, [*words[1:-1], "--dry-run", str(tmp_path / "no-such-segment")])
    assert refused.exit_code != 0  # the dry run does check its arguments


def test_an_unknown_strategy_is_refused_before_the_run_folder_is_written(tmp_path):
    cfg = tiny_config(f"train.run_dir={tmp_path / 'run'}", "train.accelerator=cpu",
                      "train.strategy=<img src=x onerror=alert(1)>")
    with pytest.raises(ConfigError, match="not a strategy of Lightning"):
        run(cfg, enable_wandb=False)
    with pytest.raises(ConfigError, match="did you mean 'deepspeed_stage_2'"):
        run(tiny_config(f"train.run_dir={tmp_path / 'run'}", "train.strategy=deepspeed_stage2"), enable_wandb=False)
    assert not (tmp_path / "run").exists()


def test_fp16_on_the_cpu_is_refused_before_the_run_folder_is_written(tmp_path):
    cfg = tiny_config(f"train.run_dir={tmp_path / 'run'}", "train.accelerator=cpu", "train.precision=16-mixed")
    with pytest.raises(ConfigError, match="train.precision=16-mixed: fp16 trains on GPUs only"):
        run(cfg, enable_wandb=False)
    assert not (tmp_path / "run").exists()


def test_compile_follows_the_setting_and_the_machine(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from recon3d.training import build

    def task():
        return SimpleNamespace(compiled_modules=("model", "absent"), model=torch.nn.Linear(2, 2))

    cpu = [f"train.run_dir={tmp_path}", "train.accelerator=cpu"]
    assert build.compile_task(tiny_config(*cpu), task()) == []  # auto: not on a CPU
    assert build.compile_task(tiny_config(*cpu, "train.compile=off"), task()) == []
    compiled = task()
    assert build.compile_task(tiny_config(*cpu, "train.compile=on"), compiled) == ["model"]
    assert compiled.model._compiled_call_impl is not None and list(compiled.model.state_dict()) == ["weight", "bias"]
    monkeypatch.setattr(build, "compile_missing", lambda device: f"nothing for {device}")
    with pytest.raises(ConfigError, match="train.compile=on: torch.compile cannot run here: nothing for cpu"):
        build.check_compile(tiny_config(*cpu, "train.compile=on"))
    monkeypatch.setattr(build, "trains_on_gpu", lambda train: True)
    assert build.compile_task(tiny_config(f"train.run_dir={tmp_path}"), task()) == []  # auto on a GPU: says why
    assert "train.compile=auto: training eagerly, torch.compile cannot run here: nothing for cuda" in \
        capsys.readouterr().err
    with pytest.raises(ConfigError, match="train.compile=maybe: auto | on | off"):
        tiny_config("train.compile=maybe")


def test_a_compiled_autoencoder_trains_and_its_checkpoint_loads_eagerly(tiny_shards, tmp_path, capfd):
    from recon3d.inference.autoencoder import load_autoencoder

    cfg = tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={tmp_path}", "train.accelerator=cpu",
                      "train.compile=on", "loader.train_samples_per_epoch=8", "train.logger=csv")
    result = run(cfg, enable_wandb=False, enable_progress_bar=False)
    assert "train.compile: torch.compile of model" in capfd.readouterr().err
    task = load_autoencoder(result.last_checkpoint)
    assert result.global_step > 0 and task.model.decoder.last.weight.isfinite().all()
