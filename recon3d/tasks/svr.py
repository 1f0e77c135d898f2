"""SVRTask: single-view reconstruction by regressing the frozen autoencoder's code z from one image (MSE)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from recon3d.models.image_encoder import ImageEncoder
from recon3d.tasks.autoencoder import check_finite
from recon3d.tasks.shape_eval import decode_occupancy, surface_scores, voxel_iou


class SVRTask(L.LightningModule):
    """A ResNet image encoder trained to predict the autoencoder's z of the pictured shape.

    Targets come from exported latents (`recon3d export-latents`), looked up by sample key. Validation decodes the
    predicted z with the autoencoder's frozen decoder and measures the shape: val/iou (on val_resolution^3),
    val/chamfer (IM-NET convention x1000), val/fscore@1%, each also per category (val/iou/<category>), besides
    val/latent_mse. image_size, crop_size and holdout_views record how it was trained, for
    `recon3d reconstruct` and `recon3d eval-svr`.
    """

    def __init__(self, *, latent_dim: int = 256, image_channels: int = 1, architecture: str = "resnet18",
                 base_width: int = 64, lr: float = 1e-4, beta1: float = 0.5, beta2: float = 0.999,
                 autoencoder_ckpt: str = "", latents: str = "", val_resolution: int = 32,
                 categories: Sequence[str] = (), image_size: int = 137, crop_size: int = 128,
                 holdout_views: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = ImageEncoder(latent_dim=latent_dim, image_channels=image_channels,
                                    architecture=architecture, base_width=base_width)
        self._frozen: list = []  # the autoencoder's decoder, loaded in setup; a plain list keeps it out of this
        # task's state_dict, optimiser and DDP wrapping (it is not trained here)
        self._rows: Dict[str, int] = {}
        self.categories = list(categories)

    # --------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        from recon3d.data.latents import read_all_latents
        from recon3d.engine.inference import load_task

        keys, codes = read_all_latents(self.hparams.latents)
        if codes.shape[1] != self.hparams.latent_dim:
            raise ValueError(f"latents have size {codes.shape[1]}, the image encoder predicts "
                             f"{self.hparams.latent_dim}: set svr.latent_dim to the autoencoder's")
        self._rows = {key: i for i, key in enumerate(keys)}
        self.register_buffer("codes", torch.as_tensor(codes), persistent=False)
        if not self.categories:
            self.categories = sorted({k.split("/")[0] for k in keys})
        if self.hparams.autoencoder_ckpt and not self._frozen:
            decoder = load_task(self.hparams.autoencoder_ckpt, "cpu").model.decoder
            decoder.requires_grad_(False)
            self._frozen.append(decoder.eval())

    @property
    def decoder(self):
        return self._frozen[0] if self._frozen else None

    def targets(self, keys: List[str]) -> torch.Tensor:
        try:
            rows = [self._rows[k] for k in keys]
        except KeyError as err:
            raise KeyError(f"no latent code for sample {err.args[0]!r}: re-export the latents for these shards")
        return self.codes[torch.as_tensor(rows, device=self.codes.device)]

    # --------------------------------------------------------------------------------------------- steps
    def configure_optimizers(self):
        return torch.optim.Adam(self.encoder.parameters(), lr=self.hparams.lr,
                                betas=(self.hparams.beta1, self.hparams.beta2))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.mse_loss(self.encoder(batch["image"]), self.targets(batch["key"]))
        check_finite(loss, self, f"epoch {self.current_epoch}", self.trainer.default_root_dir)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["key"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        count = len(self.categories)
        self._sums = torch.zeros(3, count, device=self.device, dtype=torch.float64)  # iou, chamfer, fscore
        self._counts = torch.zeros(2, count, device=self.device, dtype=torch.float64)  # shapes, chamfer shapes

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        z = self.encoder(batch["image"])
        size = len(batch["key"])
        self.log("val/latent_mse", F.mse_loss(z, self.targets(batch["key"])), batch_size=size, sync_dist=True)
        if self.decoder is None:
            return
        self.decoder.to(z.device)
        pred = decode_occupancy(self.decoder, z, self.hparams.val_resolution)
        iou = voxel_iou(pred, batch["voxels"]).double()
        chamfers, fscores = surface_scores(pred.float().cpu().numpy(), batch["surface_points"].cpu().numpy()) \
            if "surface_points" in batch else ([float("nan")] * size, [0.0] * size)
        index = {c: i for i, c in enumerate(self.categories)}
        for i, key in enumerate(batch["key"]):
            column = index.get(key.split("/")[0])
            if column is None:
                continue
            self._sums[0, column] += iou[i]
            self._sums[2, column] += fscores[i]
            self._counts[0, column] += 1
            if not np.isnan(chamfers[i]):
                self._sums[1, column] += chamfers[i]
                self._counts[1, column] += 1

    def on_validation_epoch_end(self) -> None:
        if self.decoder is None or self.trainer.sanity_checking:
            return
        # per-category sums from every rank: a rank that saw no shape of a category still takes part
        sums = self.trainer.strategy.reduce(self._sums, reduce_op="sum")
        counts = self.trainer.strategy.reduce(self._counts, reduce_op="sum")
        shapes = counts[0].clamp(min=1)
        seen = counts[0] > 0
        if not seen.any():
            return
        metrics = {"val/iou": (sums[0][seen] / shapes[seen]).mean(),
                   "val/fscore@1%": (sums[2][seen] / shapes[seen]).mean()}
        with_chamfer = counts[1] > 0
        if with_chamfer.any():
            metrics["val/chamfer"] = (sums[1][with_chamfer] / counts[1][with_chamfer]).mean()
        for column, category in enumerate(self.categories):
            if seen[column]:
                metrics[f"val/iou/{category}"] = sums[0, column] / shapes[column]
        self.log_dict({k: v.float() for k, v in metrics.items()}, rank_zero_only=True)
