import math

import lightning as L
import pytest
import torch

from recon3d.tasks.autoencoder import AutoencoderTask, NonFiniteLossError
from recon3d.training.run import run
from tests.conftest import tiny_config


def _cfg(shards, run_dir, *extra):
    return tiny_config(f"loader.shards={shards}", f"train.run_dir={run_dir}", "loader.train_samples_per_epoch=8",
                       "train.accelerator=cpu", *extra)


def test_fast_dev_run(tiny_shards, tmp_path):
    result = run(_cfg(tiny_shards, tmp_path), enable_wandb=False, fast_dev_run=True, enable_progress_bar=False)
    assert result.global_step == 1
    assert "train/loss" in result.metrics and "val/iou" in result.metrics


def test_two_phases_switch_point_sets_and_write_logs(tiny_shards, tmp_path):
    result = run(_cfg(tiny_shards, tmp_path), enable_wandb=False, enable_progress_bar=False)
    assert result.epoch == 2 and result.global_step == 8  # 2 epochs x ceil(8 / 2) steps
    rows = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    resolutions = {float(r.split(",")[header.index("train/resolution")]) for r in rows[1:]
                   if r.split(",")[header.index("train/resolution")]}
    assert resolutions == {8.0, 16.0}
    for column in ("train/loss", "val/iou", "val/fscore@1%", "val/empty_meshes", "train/points_per_s"):
        assert column in header
    empty = [float(r.split(",")[header.index("val/empty_meshes")]) for r in rows[1:]
             if r.split(",")[header.index("val/empty_meshes")]]
    assert ("val/chamfer" in header) == (min(empty) < 1.0)  # Chamfer only over shapes whose mesh is not empty
    assert list((tmp_path / "reconstructions").glob("epoch_*.png"))
    assert result.last_checkpoint.name == "last.ckpt" and result.best_checkpoint is not None


def test_resume_continues_the_same_phase_and_step(tiny_shards, tmp_path):
    cfg = _cfg(tiny_shards, tmp_path, "train.phase_epochs=[1,2]")
    first = run(cfg, enable_wandb=False, enable_progress_bar=False, max_epochs=2)
    assert first.global_step == 8
    ckpt = torch.load(first.last_checkpoint, weights_only=True)
    assert ckpt["global_step"] == 8 and ckpt["recon3d_resolution"] == 16
    second = run(cfg, enable_wandb=False, enable_progress_bar=False)  # resume: auto
    assert second.global_step == 12 and second.epoch == 3
    def steps(version):
        rows = (tmp_path / "logs" / version / "metrics.csv").read_text().splitlines()
        return [int(r.split(",")[rows[0].split(",").index("step")]) for r in rows[1:]]

    assert max(steps("version_0")) < 8 <= min(steps("version_1"))  # history kept, the new log continues it


def test_checkpoint_reloads_with_weights_only(tiny_shards, tmp_path):
    result = run(_cfg(tiny_shards, tmp_path), enable_wandb=False, fast_dev_run=False, enable_progress_bar=False,
                 max_epochs=1)
    torch.load(result.last_checkpoint, weights_only=True)
    task = AutoencoderTask.load_from_checkpoint(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert task.hparams.latent_dim == 16 and task.resolution_for_epoch(1) == 16
    voxels = torch.zeros(1, 1, 16, 16, 16)
    assert task.model.encoder(voxels).shape == (1, 16)


def test_nan_loss_stops_with_a_clear_message(tiny_shards, tmp_path, monkeypatch):
    cfg = _cfg(tiny_shards, tmp_path, "train.phase_epochs=[1,1]")
    run(cfg, enable_wandb=False, enable_progress_bar=False, max_epochs=1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    real = torch.nn.functional.mse_loss
    monkeypatch.setattr(torch.nn.functional, "mse_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at global step 4 \(epoch 1"):
        run(cfg, enable_wandb=False, enable_progress_bar=False)
    assert last.read_bytes() == before  # the last good checkpoint is kept


def test_wandb_runs_offline_without_a_key(tiny_shards, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _cfg(tiny_shards, tmp_path, "train.logger=wandb", "train.wandb_mode=offline")
    run(cfg, enable_progress_bar=False, max_epochs=1)
    [offline] = list((tmp_path / "wandb").glob("offline-run-*"))
    # the validation's picture reached W&B (recon3d's logger is a WandbLogger subclass: it was skipped by name)
    assert list(offline.rglob("media/images/val/reconstructions_*.png"))


def test_last_checkpoint_is_written_during_training_not_only_at_the_end(tiny_shards, tmp_path):
    import lightning as L

    from recon3d.training import build

    seen = []

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            seen.append((tmp_path / "checkpoints" / "last.ckpt").is_file())

    cfg = _cfg(tiny_shards, tmp_path, "train.phase_epochs=[2,1]")
    original = build.build_callbacks
    try:
        build.build_callbacks = lambda c: original(c) + [Spy()]
        run(cfg, enable_wandb=False, enable_progress_bar=False)
    finally:
        build.build_callbacks = original
    assert seen == [False, True, True]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def _logged_lr(run_dir, version="version_0"):
    rows = (run_dir / "logs" / version / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col, step = header.index("lr-Adam"), header.index("step")
    return {int(r.split(",")[step]): float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]}


def test_cosine_schedule_ends_at_lr_final_and_survives_a_resume(tiny_shards, tmp_path):
    extra = ("train.lr=0.001", "train.lr_schedule=cosine", "train.lr_final=0.1", "train.log_every_steps=1",
             "train.phase_epochs=[1,2]")
    whole = run(_cfg(tiny_shards, tmp_path / "whole", *extra), enable_wandb=False, enable_progress_bar=False)
    assert whole.global_step == 12
    lrs = _logged_lr(tmp_path / "whole")
    steps = sorted(lrs)
    assert lrs[steps[0]] == pytest.approx(0.001, rel=0.05)
    assert all(a >= b for a, b in zip([lrs[s] for s in steps], [lrs[s] for s in steps[1:]]))  # never rises
    # step s trains with lr x (lr_final + (1 - lr_final) (1 + cos(pi s / 12)) / 2): 0.1 x lr reached at the end
    assert lrs == pytest.approx({s: 0.001 * (0.1 + 0.45 * (1 + math.cos(math.pi * s / 12))) for s in steps})
    assert steps[-1] == 11 and lrs[11] < 0.00012
    # stopped after 2 of 3 epochs (as a preempted job is) and resumed: the same lr at every step as the whole run
    class StopAfterTwoEpochs(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            trainer.should_stop = trainer.current_epoch == 1

    cfg = _cfg(tiny_shards, tmp_path / "split", *extra)
    assert run(cfg, enable_wandb=False, enable_progress_bar=False, extra_callbacks=[StopAfterTwoEpochs()]
               ).global_step == 8
    run(cfg, enable_wandb=False, enable_progress_bar=False)
    resumed = {**_logged_lr(tmp_path / "split"), **_logged_lr(tmp_path / "split", "version_1")}
    assert resumed == pytest.approx(lrs)


def test_unknown_lr_schedule_is_refused():
    from recon3d.errors import ConfigError

    with pytest.raises(ConfigError, match="lr_schedule"):
        tiny_config("train.lr_schedule=step")


def test_cosine_schedule_follows_the_clock_when_training_by_time(tiny_shards, tmp_path):
    cfg = _cfg(tiny_shards, tmp_path, "train.lr=0.001", "train.lr_schedule=cosine", "train.lr_final=0.1",
               "train.log_every_steps=1", "train.max_minutes=0.1", "train.phase_fractions=[0.5,0.5]",
               "train.phase_epochs=[1000,1000]")
    run(cfg, enable_wandb=False, enable_progress_bar=False)
    lrs = _logged_lr(tmp_path)
    values = [lrs[s] for s in sorted(lrs)]
    assert values[0] == pytest.approx(0.001) and all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] < 0.0003  # the clock ran out, not the epochs: the schedule reached (near) its end


def test_logged_reconstructions_take_each_category_in_turn(monkeypatch):
    """The picture logged at validation shows shapes of several categories though the batch starts with one."""
    from types import SimpleNamespace

    import recon3d.tasks.autoencoder as module

    task = AutoencoderTask(latent_dim=8, encoder_channels=2, decoder_widths=[8], reconstructions_to_log=3)
    task._trainer = SimpleNamespace(sanity_checking=False, current_epoch=0)
    monkeypatch.setattr(type(task), "current_epoch", property(lambda self: 0))
    drawn, published = [], []
    monkeypatch.setattr(module, "grid_to_mesh", lambda grid, *a, **k: drawn.append(int(grid.sum())) or (
        torch.zeros(3, 3).numpy(), torch.zeros(1, 3, dtype=torch.int64).numpy()))
    monkeypatch.setattr(module, "publish_image", lambda task, image, meshes: published.append(len(meshes)))
    keys = ["airplane/a0", "airplane/a1", "airplane/a2", "car/c0", "chair/h0", "chair/h1"]
    voxels = torch.zeros(6, 1, 4, 4, 4)
    for i in range(6):  # sample i has i + 1 occupied cells, so a drawn grid names its sample
        voxels[i].view(-1)[:i + 1] = 1
    task._log_reconstructions(voxels, voxels[:, 0], keys)
    assert drawn[::2] == [1, 4, 5] and published == [3]  # airplane/a0, car/c0, chair/h0 (targets; every other)
