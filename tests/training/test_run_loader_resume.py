"""A run resumed from a mid-epoch checkpoint goes on with the batches of that epoch it had not taken: nothing of the
interrupted epoch is replayed or lost (the DataModule's state in the checkpoint, TrainStream.skip_batches)."""

import shutil

import pytest

from recon3d.data.loading.datamodule import ShardDataModule
from recon3d.training.run import run
from tests.conftest import tiny_config


class _Stop(Exception):
    pass


_REAL_HOOK = ShardDataModule.on_after_batch_transfer


def _record(monkeypatch, seen: list, stop_after: int = 0):
    real = _REAL_HOOK

    def hook(self, batch, index):
        if self.trainer.training:
            if stop_after and len(seen) == stop_after:
                raise _Stop("interrupted")  # as a killed job: after step `stop_after`, before the next
            seen.append((self.trainer.current_epoch, tuple(batch["key"])))
        return real(self, batch, index)

    monkeypatch.setattr(ShardDataModule, "on_after_batch_transfer", hook)


@pytest.mark.parametrize("workers,indexed", [(0, True), (2, True), (2, False)])
def test_a_mid_epoch_resume_neither_replays_nor_skips(tiny_shards, tmp_path, monkeypatch, workers, indexed):
    shards = tiny_shards
    if not indexed:  # a shard set without indexes is streamed; skipped batches are read past, not decoded
        shards = tmp_path / "streamed"
        shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("*.idx"))

    def cfg(run_dir):
        return tiny_config(f"loader.shards={shards}", f"train.run_dir={run_dir}", "train.accelerator=cpu",
                           "loader.train_samples_per_epoch=14", f"loader.num_workers={workers}",
                           "train.checkpoint_every_steps=3", "train.phase_epochs=[2]", "train.point_resolutions=[8]")

    whole: list = []
    _record(monkeypatch, whole)
    run(cfg(tmp_path / "whole"), enable_wandb=False, enable_progress_bar=False)
    assert len(whole) == 14 and len({keys for _, keys in whole}) > 7  # 2 epochs x 7 batches of 2

    first: list = []
    _record(monkeypatch, first, stop_after=5)  # checkpoints at steps 3 (last.ckpt): batches 4 and 5 are lost work
    with pytest.raises(_Stop):
        run(cfg(tmp_path / "cut"), enable_wandb=False, enable_progress_bar=False)
    resumed: list = []
    _record(monkeypatch, resumed)
    result = run(cfg(tmp_path / "cut"), enable_wandb=False, enable_progress_bar=False)
    assert result.global_step == 14
    assert first[:3] + resumed == whole  # steps 1-3, then 4-7 of epoch 0 and all of epoch 1, in the same order


def test_a_stop_after_an_epochs_last_batch_loses_no_epoch(tiny_shards, tmp_path, monkeypatch):
    """SIGTERM during the last batch of an epoch: the preemption checkpoint holds the epoch with every batch taken
    but not ended, and Lightning keeps the loader across epochs (one point set, no reload). The resumed run ends that
    epoch with no batch and trains every batch of the next (it skipped those too: 118 of 120 steps seen on VRN)."""
    import os
    import signal

    from recon3d.training.callbacks import Preempted

    def cfg(run_dir):
        return tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={run_dir}", "train.accelerator=cpu",
                           "loader.train_samples_per_epoch=14", "train.phase_epochs=[3]",
                           "train.point_resolutions=[8]")

    whole: list = []
    _record(monkeypatch, whole)
    run(cfg(tmp_path / "whole"), enable_wandb=False, enable_progress_bar=False)
    assert len(whole) == 21  # 3 epochs x 7 batches of 2

    first: list = []

    def hook(self, batch, index):
        if self.trainer.training:
            first.append((self.trainer.current_epoch, tuple(batch["key"])))
            if len(first) == 7:
                os.kill(os.getpid(), signal.SIGTERM)  # noted now, saved at the end of this step
        return _REAL_HOOK(self, batch, index)

    monkeypatch.setattr(ShardDataModule, "on_after_batch_transfer", hook)
    with pytest.raises(Preempted):
        run(cfg(tmp_path / "cut"), enable_wandb=False, enable_progress_bar=False)
    resumed: list = []
    _record(monkeypatch, resumed)
    result = run(cfg(tmp_path / "cut"), enable_wandb=False, enable_progress_bar=False)
    assert result.global_step == 21 and first + resumed == whole, ([e for e, _ in first], [e for e, _ in resumed])
