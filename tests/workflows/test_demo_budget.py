"""The demo's time budget: each stage's share of what is left, and the autoencoder's phases by time."""

from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import Timer

from recon3d.config import load_config
from recon3d.tasks.autoencoder import AutoencoderTask
from recon3d.workflows.demo import DEFAULTS, StageLog, stage_minutes


def _log(tmp_path, **seconds) -> StageLog:
    log = StageLog(tmp_path / "stages.json")
    for name, value in seconds.items():
        log.finish(name, value)
    return log


def test_stage_shares_of_what_is_left(tmp_path):
    cfg = load_config([DEFAULTS], ["demo.minutes=10"])
    shares = cfg.demo.shares
    fresh = _log(tmp_path)
    assert stage_minutes(cfg, fresh, "autoencoder") == pytest.approx(10 * shares["autoencoder"] / sum(shares.values()))
    # the stages before it took 30 s in all: the autoencoder gets its share of the 9.5 minutes left
    log = _log(tmp_path, meshes=6, shards=24)
    waiting = sum(shares.values()) - shares["meshes"] - shares["shards"]
    assert stage_minutes(cfg, log, "autoencoder") == pytest.approx(9.5 * shares["autoencoder"] / waiting)
    # a stage that ran over leaves less to the next ones; a spent budget still gives a quarter of a minute
    over = _log(tmp_path / "b", meshes=6, shards=24, autoencoder=540, latents=6)
    assert stage_minutes(cfg, over, "svr") < 10 * shares["svr"] / sum(shares.values())
    spent = _log(tmp_path / "c", meshes=6, shards=24, autoencoder=700)
    assert stage_minutes(cfg, spent, "svr") == 0.25


class _Clock(Timer):
    def __init__(self) -> None:
        super().__init__(duration={"minutes": 1})
        self.now = 0.0

    def time_elapsed(self, stage="train") -> float:
        return self.now


def _task(**schedule) -> AutoencoderTask:
    return AutoencoderTask(latent_dim=8, encoder_channels=2, voxel_resolution=16, val_resolution=16,
                           decoder_widths=[8], **schedule)


def test_autoencoder_phases_end_by_time_or_by_their_epoch_cap():
    timed = dict(point_resolutions=[16, 32, 64], phase_epochs=[100, 2, 100], phase_fractions=[1, 1, 2],
                 max_minutes=1.0)  # phase edges at 15 s and 30 s of training
    task = _task(**timed)
    clock = _Clock()
    task._trainer = SimpleNamespace(callbacks=[clock], current_epoch=3)
    for epoch, elapsed in enumerate([10, 16, 20, 25]):
        clock.now = elapsed
        task._advance_timed_phase(epoch + 1)
    # epoch 0: 10 s < 15 s; epoch 1 ends at 16 s: phase 2 from epoch 2; its cap of 2 epochs ends it before epoch 4
    assert task.phase_starts() == [0, 2, 4]
    assert [task.resolution_for_epoch(e) for e in range(6)] == [16, 16, 32, 32, 64, 64]
    saved = {}
    task.on_save_checkpoint(saved)
    resumed = _task(**timed)
    resumed.on_load_checkpoint(saved)
    assert resumed.phase_starts() == [0, 2, 4] and resumed.resolution_for_epoch(3) == 32
    # without a time limit the schedule is the epoch counts, as before
    by_epochs = _task(point_resolutions=[16, 32], phase_epochs=[2, 3], phase_fractions=[1, 1])
    assert [by_epochs.resolution_for_epoch(e) for e in range(7)] == [16, 16, 32, 32, 32, 32, 32]
