"""Checkpointing pieces: a rolling last.ckpt that is really written during training, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from recon3d.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to `<name>.tmp` and renames it: a job killed mid-write leaves the old file intact."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def rolling_last_checkpoint(dirpath: Path, every_n_train_steps: int = 0) -> ModelCheckpoint:
    """A ModelCheckpoint that keeps exactly one file, last.ckpt, rewritten at every epoch end (and every N steps).

    Lightning's own save_last only writes last.ckpt when a top-k checkpoint was saved in the same step, so with
    save_top_k=0 it would appear only when training ends; this keeps one "top" checkpoint named last instead.
    """
    return ModelCheckpoint(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
                           every_n_train_steps=every_n_train_steps or None, save_on_train_epoch_end=True,
                           enable_version_counter=False)
