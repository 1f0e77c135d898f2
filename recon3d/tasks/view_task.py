"""ViewTask: what VRNTask and StereoTask share (one network on one view, Adam, per-category validation scores and
a picture sheet per validation)."""

from __future__ import annotations

from collections import Counter
from typing import List

import lightning as L
import torch

from recon3d.data.schema import take_in_turn
from recon3d.tasks.autoencoder import check_finite
from recon3d.tasks.checkpoints import StageCheckpoint
from recon3d.tasks.pictures import publish_image
from recon3d.tasks.schedule import lr_scheduler
from recon3d.tasks.scores import CategoryScores


class ViewTask(StageCheckpoint, L.LightningModule):
    """Subclasses set `stage` and self.model, keep lr, beta1, beta2, lr_schedule, lr_final and max_minutes in their
    hyperparameters, and define training_loss(batch), validation_step (adding per-shape
    scores to self.scores and (key, picture) pairs to self.pictures for the rows picture_rows gives) and
    picture_sheet(pictures); the stage table names the sheet's folder and caption."""

    compiled_modules = ("model",)  # train.compile

    def __init__(self) -> None:
        super().__init__()
        self.scores, self.pictures = CategoryScores(), []

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.model.parameters(), lr=hp.lr, betas=(hp.beta1, hp.beta2))
        scheduler = lr_scheduler(optimizer, self, hp.lr_schedule, hp.lr_final, hp.max_minutes)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        check_finite(loss, self, f"epoch {self.current_epoch}", self.trainer.default_root_dir)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["key"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self.scores, self.pictures = CategoryScores(), []

    def picture_rows(self, batch: dict) -> List[int]:
        """Rows of the batch to keep a picture of: up to images_to_log per category, since a validation split read
        shard by shard often runs category by category (the sheet then takes them in turn, see sheet_pictures)."""
        kept = Counter(key.split("/")[0] for key, _ in self.pictures)
        rows = []
        for row, key in enumerate(batch["key"]):
            category = key.split("/")[0]
            if kept[category] < self.hparams.images_to_log:
                kept[category] += 1
                rows.append(row)
        return rows

    def sheet_pictures(self) -> list:
        """images_to_log of the kept pictures, taken in turn from each category, in the order they came."""
        labels = [f"{key}/{n}" for n, (key, _) in enumerate(self.pictures)]  # a shape may come in several views
        chosen = set(take_in_turn(labels, self.hparams.images_to_log))
        return [picture for label, (_, picture) in zip(labels, self.pictures) if label in chosen]

    def on_validation_epoch_end(self) -> None:
        metrics = self.scores.summary("val")
        if self.trainer.sanity_checking or not metrics:
            return
        self.log_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in metrics.items()}, rank_zero_only=True)
        if self.global_rank == 0 and self.pictures:
            publish_image(self, self.picture_sheet(self.sheet_pictures()))
