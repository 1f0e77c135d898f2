"""AutoencoderTask: IM-NET's 3D->3D autoencoder trained progressively 16 -> 32 -> 64 with an MSE loss."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from recon3d.config import Config, to_dict
from recon3d.data.schema import take_in_turn
from recon3d.errors import ConfigError, RunError
from recon3d.geometry.extract import grid_to_mesh
from recon3d.geometry.render import render_preview
from recon3d.models import networks
from recon3d.tasks.checkpoints import StageCheckpoint
from recon3d.tasks.decoding import decode_occupancy
from recon3d.tasks.pictures import publish_image
from recon3d.tasks.schedule import lr_scheduler, train_seconds
from recon3d.tasks.scores import surface_scores, voxel_iou


class NonFiniteLossError(RunError):
    """The loss became NaN or infinite; training stops so that the last good checkpoint is kept."""


def check_finite(loss: torch.Tensor, module: L.LightningModule, where: str, run_dir: str = "") -> None:
    """Raise NonFiniteLossError naming the step when `loss` is NaN or infinite."""
    if not torch.isfinite(loss):
        last = Path(run_dir) / "checkpoints" / "last.ckpt" if run_dir else None
        ckpt = (f" The last good checkpoint is {last};" if last is not None and last.exists() else
                " No checkpoint was written yet;")
        raise NonFiniteLossError(f"loss is {loss.item()} at global step {module.global_step} ({where}); stopping."
                                 f"{ckpt} lower the learning rate or check the data.")


class AutoencoderTask(StageCheckpoint, L.LightningModule):
    """Progressive training of the voxel encoder and implicit decoder.

    Phase k trains on the point set at point_resolutions[k] for phase_epochs[k] epochs, or, with phase_fractions and
    a time limit (max_minutes), until that share of the time is spent (phase_epochs[k] then caps it); the task tells the
    DataModule which set to load (`set_point_resolution`) before each epoch's loaders are made. Logs train/loss,
    train/resolution, train/points_per_s, val/iou (on val_resolution^3 cells), val/chamfer (IM-NET's squared-L2
    Chamfer x 1000 between the extracted mesh and the shape's stored surface samples) and val/fscore.
    """

    def __init__(self, *, latent_dim: int = 256, encoder_channels: int = 32, voxel_resolution: int = 64,
                 decoder_widths: Sequence[int] = (1024, 1024, 1024, 512, 256, 128), decoder_output: str = "leaky_clip",
                 point_octaves: int = 0, lr: float = 5e-5, beta1: float = 0.5, beta2: float = 0.999,
                 lr_schedule: str = "constant", lr_final: float = 0.05, point_resolutions: Sequence[int] = (16, 32, 64),
                 phase_epochs: Sequence[int] = (20, 20, 40),
                 phase_fractions: Sequence[float] = (), max_minutes: float = 0.0, val_resolution: int = 32,
                 reconstructions_to_log: int = 4, run_dir: str = "") -> None:
        super().__init__()
        if len(point_resolutions) != len(phase_epochs):
            raise ValueError("point_resolutions and phase_epochs must have the same length")
        if voxel_resolution % val_resolution:
            raise ValueError(f"val_resolution {val_resolution} must divide voxel_resolution {voxel_resolution}")
        self.save_hyperparameters()
        self.model = networks.autoencoder(self.hparams)
        self._step_started = 0.0
        self._rendered_epoch = -1
        self._phase_starts = [0]  # the epoch each phase began (timed phases; the schedule by epochs is fixed)

    stage = "autoencoder"
    compiled_modules = ("model",)  # what train.compile compiles (recon3d/training/build.py compile_task)

    @classmethod
    def from_config(cls, cfg: Config, manifest: dict) -> "AutoencoderTask":
        """The task of cfg (model and train sections) for the shards described by `manifest`.

        Raises:
            ConfigError: the schedule's point sets are not in the shards.
        """
        stored = manifest["config"]["geometry"]["point_resolutions"]
        missing = [r for r in cfg.train.point_resolutions if r not in stored]
        if manifest["source"]["kind"] != "imnet_hdf5" and missing:
            raise ConfigError(f"train.point_resolutions {missing} are not in the shards (stored: {stored}); "
                              f"rebuild them or change the schedule")
        train = cfg.train
        return cls(**to_dict(cfg.model), voxel_resolution=int(manifest["config"]["geometry"]["voxel_resolution"]),
                   lr=train.lr, beta1=train.beta1, beta2=train.beta2, lr_schedule=train.lr_schedule,
                   lr_final=train.lr_final, point_resolutions=list(train.point_resolutions),
                   phase_epochs=list(train.phase_epochs), phase_fractions=list(train.phase_fractions),
                   max_minutes=train.max_minutes, val_resolution=train.val_resolution,
                   reconstructions_to_log=train.reconstructions_to_log, run_dir=train.run_dir)

    # ------------------------------------------------------------------------------------------- schedule
    def _timed(self) -> bool:
        return bool(self.hparams.phase_fractions) and self.hparams.max_minutes > 0

    def phase_starts(self) -> list:
        """The epoch at which each phase began (so far, with timed phases); a phase of 0 epochs starts with the next."""
        if self._timed():
            return list(self._phase_starts)
        return [sum(self.hparams.phase_epochs[:k]) for k in range(len(self.hparams.phase_epochs))]

    def resolution_for_epoch(self, epoch: int) -> int:
        starts = self.phase_starts()
        phase = max(k for k, start in enumerate(starts) if start <= epoch or k == 0)
        return int(self.hparams.point_resolutions[phase])

    def _advance_timed_phase(self, next_epoch: int) -> None:
        """End the current phase before `next_epoch` once its share of the time or its epochs are spent."""
        elapsed = train_seconds(self.trainer)
        fractions, epochs = self.hparams.phase_fractions, self.hparams.phase_epochs
        while len(self._phase_starts) < len(epochs):
            phase = len(self._phase_starts) - 1
            edge = sum(fractions[:phase + 1]) / sum(fractions) * self.hparams.max_minutes * 60
            if elapsed < edge and next_epoch - self._phase_starts[phase] < epochs[phase]:
                return
            self._phase_starts.append(next_epoch)

    def _select_resolution(self, epoch: int) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_point_resolution"):
            datamodule.set_point_resolution(self.resolution_for_epoch(epoch))

    def on_fit_start(self) -> None:
        if self._timed() and self.current_epoch == 0 and len(self._phase_starts) == 1:
            self._advance_timed_phase(0)  # skips leading phases of 0 epochs
        self._select_resolution(self.current_epoch)  # also right after a resume: the epoch is restored by now

    def on_train_epoch_end(self) -> None:
        if self._timed():
            self._advance_timed_phase(self.current_epoch + 1)
        self._select_resolution(self.current_epoch + 1)  # the next epoch's loaders are made with it

    # ------------------------------------------------------------------------------------------- training
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, betas=(hp.beta1, hp.beta2))
        scheduler = lr_scheduler(optimizer, self, hp.lr_schedule, hp.lr_final, hp.max_minutes)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred = self.model(batch["voxels"], batch["points"])
        loss = F.mse_loss(pred.float(), batch["values"].float())  # fp32: see svr.py
        check_finite(loss, self, f"epoch {self.current_epoch}, points at "
                     f"{self.resolution_for_epoch(self.current_epoch)}^3", self.hparams.run_dir)
        batch_size = batch["voxels"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/resolution", float(self.resolution_for_epoch(self.current_epoch)), batch_size=batch_size)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self._step_started
        if elapsed > 0:
            points = batch["points"].shape[0] * batch["points"].shape[1]
            self.log("train/points_per_s", points / elapsed, batch_size=batch["points"].shape[0])

    # ------------------------------------------------------------------------------------------- validation
    def decode_grid(self, z: torch.Tensor, resolution: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Occupancy (B, R, R, R) of latent codes z (B, Z) at the centres of a resolution^3 grid (in `dtype`: see
        decoding.decode_occupancy)."""
        return decode_occupancy(self.model.decoder, z, resolution, dtype=dtype)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        voxels = batch["voxels"]
        batch_size = voxels.shape[0]
        z = self.model.encoder(voxels)
        res = self.hparams.val_resolution
        pred = self.decode_grid(z, res)
        iou = voxel_iou(pred, voxels)
        self.log("val/iou", iou.mean(), prog_bar=True, batch_size=batch_size, sync_dist=True)
        self.log("val/loss", F.mse_loss(self.model.decoder(batch["points"], z).float(), batch["values"].float()),
                 batch_size=batch_size, sync_dist=True)
        if "surface_points" in batch:
            surfaces = batch["surface_points"].float().cpu().numpy()
            chamfers, fscores = surface_scores(pred.float().cpu().numpy(), surfaces)
            found = [c for c in chamfers if not np.isnan(c)]
            if found:  # empty meshes have no Chamfer distance; their share is logged on its own
                self.log("val/chamfer", float(np.mean(found)), batch_size=len(found), sync_dist=True)
            self.log("val/fscore@1%", float(np.mean(fscores)), batch_size=batch_size, sync_dist=True)
            self.log("val/empty_meshes", 1 - len(found) / batch_size, batch_size=batch_size, sync_dist=True)
        if batch_idx == 0 and self.global_rank == 0:
            self._log_reconstructions(voxels, pred, list(batch.get("key", ())))

    def _log_reconstructions(self, voxels: torch.Tensor, pred: torch.Tensor, keys: Sequence[str] = ()) -> None:
        """Input voxels beside the reconstruction, rendered with our renderer: a PNG per epoch, and to W&B; the
        shapes are taken in turn from each category of the batch (its first shapes are often all of one)."""
        count = min(self.hparams.reconstructions_to_log, voxels.shape[0])
        if count == 0 or self._rendered_epoch == self.current_epoch or self.trainer.sanity_checking:
            return
        self._rendered_epoch = self.current_epoch
        picks = [list(keys).index(key) for key in take_in_turn(keys, count)] if len(keys) == voxels.shape[0] \
            else range(count)
        rows = []
        meshes = []
        for i in picks:
            target = voxels[i, 0].float().cpu().numpy()
            recon = pred[i].float().cpu().numpy()
            pair = [grid_to_mesh(target, 0.5, corners=False), grid_to_mesh(recon, 0.5, corners=False)]
            meshes.append(pair[1])
            rows.append(np.concatenate([render_preview(v, f, 128) for v, f in pair], axis=1))
        publish_image(self, np.concatenate(rows, axis=0), meshes)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["recon3d_resolution"] = self.resolution_for_epoch(self.current_epoch)
        checkpoint["recon3d_phase_starts"] = list(self._phase_starts)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._phase_starts = list(checkpoint.get("recon3d_phase_starts", [0]))
