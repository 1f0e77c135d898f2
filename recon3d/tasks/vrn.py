"""VRNTask: an image straight to a voxel volume aligned with it (stacked hourglasses, per-voxel cross-entropy)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from recon3d.config import Config
from recon3d.errors import ConfigError
from recon3d.geometry.camera import R2N2_FOCAL_PER_WIDTH, focal_for_padding
from recon3d.geometry.metrics import batch_iou
from recon3d.models import networks
from recon3d.tasks.view_task import ViewTask


def volume_iou(logits: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU (B,) of predicted occupancy (logits > 0) against volume (B, D, H, W) in {0, 1}; 1 when both
    are empty."""
    return batch_iou(logits > 0, volume > 0.5).float()


def soft_iou_loss(logits: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - soft IoU (sigmoid probabilities as fuzzy occupancy; +1 keeps empty volumes
    finite): a differentiable stand-in for the volume IoU the model is scored by."""
    probability, truth = torch.sigmoid(logits.float()).flatten(1), volume.float().flatten(1)
    overlap = (probability * truth).sum(1)
    return (1 - (overlap + 1) / (probability.sum(1) + truth.sum(1) - overlap + 1)).mean()


def volume_sheet(rows) -> np.ndarray:
    """(H', W', 3) uint8 sheet, one line per (image (S, S) float in [0, 1], true and predicted occupancy (D, s, s)
    bool): the input, the true depth and the predicted depth of the nearest occupied slice, scaled to S."""
    lines = []
    for image, truth, predicted in rows:
        scale = image.shape[-1] // truth.shape[-1]
        cells = [np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)]
        cells += [np.kron(depth_picture(v), np.ones((scale, scale), np.uint8)) for v in (truth, predicted)]
        lines.append(np.concatenate(cells, axis=1))
    return np.repeat(np.concatenate(lines, axis=0)[..., None], 3, axis=-1)


def depth_picture(occupancy: np.ndarray) -> np.ndarray:
    """(H, W) uint8 of a (D, H, W) bool volume: the nearest occupied slice, near = bright, empty = black."""
    depth = occupancy.shape[0]
    first = np.where(occupancy.any(0), occupancy.argmax(0), depth)
    return np.where(first < depth, 255 - (first * 200) // depth, 0).astype(np.uint8)


class VRNTask(ViewTask):
    """Stacked-hourglass volumetric regression (VRN, Jackson et al. 2017) on the loader's volume stage.

    Loss: sigmoid cross-entropy per voxel (occupied voxels weighted by positive_weight), plus soft_iou_weight x
    `soft_iou_loss`, summed over the stacks (each supervised). Logs train/loss, val/loss,
    val/iou (in the camera frame, mean over categories) and val/iou/<category>; a picture per validation: the
    input, the true and the predicted depth of the nearest occupied slice. image_size, crop_size, depth,
    holdout_views and the training views' typical camera (focal in pixels, distance) record how it was trained, for
    `recon3d reconstruct --model vrn`, which places the volume's cells with that camera.
    """

    stage = "vrn"

    def __init__(self, *, image_channels: int = 1, depth: int = 32, stacks: int = 2, width: int = 128,
                 hourglass_levels: int = 3, positive_weight: float = 1.0, soft_iou_weight: float = 0.0,
                 lr: float = 2.5e-4, beta1: float = 0.9, beta2: float = 0.999, lr_schedule: str = "constant",
                 lr_final: float = 0.05, max_minutes: float = 0.0,
                 image_size: int = 137, crop_size: int = 128, holdout_views: int = 0, camera_focal: float = 150.0,
                 camera_distance: float = 1.4, images_to_log: int = 4, run_dir: str = "") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = networks.volume_regressor(self.hparams)

    @classmethod
    def from_config(cls, cfg: Config, manifest: dict) -> "VRNTask":
        """The VRN of cfg.vrn on cfg.loader's crops, recording the typical camera of the shards' renders.

        Raises:
            ConfigError: the crop cannot be pooled vrn.hourglass_levels times and restored.
        """
        render, loader, vrn = manifest["config"]["render"], cfg.loader, cfg.vrn
        size, distances = int(render["image_size"]), render["distance_range"]
        if render.get("padding_px", 0) > 0:
            focal = focal_for_padding(size, render["padding_px"], distances[0])
        else:
            focal = render.get("focal_px") or R2N2_FOCAL_PER_WIDTH * size
        if loader.crop_size % (4 * 2 ** vrn.hourglass_levels):
            raise ConfigError(f"loader.crop_size={loader.crop_size} must be a multiple of 4 x 2^vrn.hourglass_levels "
                              f"({4 * 2 ** vrn.hourglass_levels}) for the hourglass to pool and return")
        return cls(image_channels=1 if loader.grayscale else 3, depth=loader.volume_depth, stacks=vrn.stacks,
                   width=vrn.width, hourglass_levels=vrn.hourglass_levels, positive_weight=vrn.positive_weight,
                   soft_iou_weight=vrn.soft_iou_weight, lr=vrn.lr, beta1=vrn.beta1, beta2=vrn.beta2,
                   lr_schedule=vrn.lr_schedule, lr_final=vrn.lr_final,
                   max_minutes=cfg.train.max_minutes, image_size=size, crop_size=loader.crop_size,
                   holdout_views=loader.holdout_views, camera_focal=float(focal),
                   camera_distance=float(sum(distances) / 2), images_to_log=cfg.train.reconstructions_to_log,
                   run_dir=cfg.train.run_dir)

    def loss(self, outputs: list, volume: torch.Tensor) -> torch.Tensor:
        weight = torch.as_tensor(self.hparams.positive_weight, device=volume.device)
        soft_iou = self.hparams.soft_iou_weight
        return sum(F.binary_cross_entropy_with_logits(logits.float(), volume.float(), pos_weight=weight)
                   + (soft_iou * soft_iou_loss(logits, volume) if soft_iou else 0.0) for logits in outputs)

    def training_loss(self, batch: dict) -> torch.Tensor:
        return self.loss(self.model(batch["image"]), batch["volume"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        outputs = self.model(batch["image"])
        self.log("val/loss", self.loss(outputs, batch["volume"]), batch_size=len(batch["key"]), sync_dist=True)
        self.scores.add(batch["key"], iou=volume_iou(outputs[-1], batch["volume"]))
        for i in self.picture_rows(batch):
            self.pictures.append((batch["key"][i], (batch["image"][i].float().mean(0).cpu().numpy(),
                                                    batch["volume"][i].float().cpu().numpy() > 0.5,
                                                    outputs[-1][i].float().cpu().numpy() > 0)))  # bf16: numpy has none

    def picture_sheet(self, pictures: list) -> np.ndarray:
        return volume_sheet(pictures)
