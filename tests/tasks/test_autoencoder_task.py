import pytest
import torch

from recon3d.training.run import run
from recon3d.tasks.autoencoder import AutoencoderTask, NonFiniteLossError
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
