"""ToyTask: predicts the share of a shape's voxels that are occupied from the voxels pooled to 4^3 (one linear layer);
a stage small enough to train in a second on the tiny shards."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from recon3d.config import Config
from recon3d.tasks.checkpoints import StageCheckpoint


def occupied_share(voxels: torch.Tensor) -> torch.Tensor:
    """(B,) share of occupied voxels of voxels (B, 1, R, R, R)."""
    return voxels.flatten(1).mean(1)


class ToyTask(StageCheckpoint, L.LightningModule):
    stage = "toy"

    def __init__(self, *, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.head = torch.nn.Linear(64, 1)

    @classmethod
    def from_config(cls, cfg: Config, manifest: dict) -> "ToyTask":
        return cls(lr=cfg.train.lr)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool3d(voxels, 4).flatten(1))[:, 0]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.mse_loss(self(batch["voxels"]), occupied_share(batch["voxels"]))
        self.log("train/loss", loss, batch_size=len(batch["key"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        error = (self(batch["voxels"]) - occupied_share(batch["voxels"])).abs().mean()
        self.log("val/error", error, batch_size=len(batch["key"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
