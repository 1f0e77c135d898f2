"""Learning-rate schedules that follow a run's progress: its share of train.max_minutes when it trains by time, else
its share of the steps its epochs allow. A run that stops by the clock still ends its schedule at the end."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from recon3d.config import LR_SCHEDULES


def train_seconds(trainer: L.Trainer) -> float:
    """Seconds the run has trained by Lightning's Timer (max_time; restored on resume), 0 without one."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return timer.time_elapsed("train") if timer is not None else 0.0


def run_progress(module: L.LightningModule, max_minutes: float) -> float:
    """The share of `module`'s run done so far, in [0, 1]: by Lightning's Timer when max_minutes > 0, else by steps."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return 0.0
    if max_minutes > 0:
        return min(1.0, train_seconds(trainer) / (max_minutes * 60))
    total = trainer.estimated_stepping_batches
    return min(1.0, trainer.global_step / total) if math.isfinite(total) and total > 0 else 0.0


def lr_scheduler(optimizer: torch.optim.Optimizer, module: L.LightningModule, schedule: str, final: float,
                 max_minutes: float):
    """Lightning's scheduler entry for `schedule`, or None for "constant". "cosine" takes the learning rate from its
    value down to `final` times it along half a cosine of the run's progress (run_progress), stepped every step."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return None

    def factor(_step: int) -> float:
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * run_progress(module, max_minutes)))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
