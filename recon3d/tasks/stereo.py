"""StereoTask: Deep3D's left -> right view synthesis, trained end to end on rendered stereo pairs with an L1 loss."""

from __future__ import annotations

from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from recon3d.config import Config, to_dict
from recon3d.models import networks
from recon3d.models.stereo import shifted_views
from recon3d.tasks.view_task import ViewTask


def shift_by(left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W): each left view shifted by its own disparity (B,) pixels, right(x) = left(x + d)."""
    return torch.cat([next(shifted_views(left[i:i + 1], [d])) for i, d in enumerate(disparity.tolist())])


def pair_errors(predicted: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                mean_disparity: torch.Tensor) -> dict:
    """Per-pair mean absolute error (B,) on the 0-255 scale of the model's right view and of the two baselines
    computed the same way: copy the left view; shift it by the mean disparity."""
    def mae(image):
        return 255.0 * (image - right).abs().flatten(1).mean(1)

    return {"mae": mae(predicted), "mae_copy": mae(left), "mae_shift": mae(shift_by(left, mean_disparity))}


def disparity_picture(disparity: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) uint8: disparity scaled from [low, high] to [0, 255] (near = bright)."""
    return np.rint(np.clip((disparity - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


class StereoTask(ViewTask):
    """Deep3D (Xie et al. 2016): a softmax over disparity planes and a selection layer; the right view is the only
    supervision. Logs train/loss (L1), val/mae with the baselines val/mae_copy and val/mae_shift (0-255 scale,
    means over categories, and per category), and a picture per validation: left | predicted right | true right
    | implied disparity."""

    stage = "stereo"

    def __init__(self, *, image_channels: int = 1, disparity_levels: int = 33, disparity_min: float = 0.0,
                 disparity_max: float = 16.0, widths: List[int] = (32, 64, 128, 256), lr: float = 2e-4,
                 beta1: float = 0.9, beta2: float = 0.999, lr_schedule: str = "constant", lr_final: float = 0.05,
                 max_minutes: float = 0.0, crop_size: int = 128, holdout_views: int = 0, images_to_log: int = 4,
                 run_dir: str = "") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = networks.view_synthesizer(self.hparams)

    @classmethod
    def from_config(cls, cfg: Config, manifest: dict) -> "StereoTask":
        """The Deep3D model of cfg.stereo on cfg.loader's crops."""
        settings = {k: v for k, v in to_dict(cfg.stereo).items() if k != "epochs"}
        return cls(image_channels=1 if cfg.loader.grayscale else 3, **settings, crop_size=cfg.loader.crop_size,
                   holdout_views=cfg.loader.holdout_views, images_to_log=cfg.train.reconstructions_to_log,
                   max_minutes=cfg.train.max_minutes, run_dir=cfg.train.run_dir)

    def training_loss(self, batch: dict) -> torch.Tensor:
        return F.l1_loss(self.model(batch["left"])["right"].float(), batch["right"].float())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch["left"])
        self.scores.add(batch["key"], **pair_errors(out["right"], batch["left"], batch["right"],
                                                    batch["mean_disparity"]))
        for i in self.picture_rows(batch):
            views = (batch["left"], out["right"], batch["right"])  # float: bf16 under bf16-mixed, numpy has none
            self.pictures.append((batch["key"][i], [t[i].float().mean(0).cpu().numpy() for t in views]
                                  + [out["disparity"][i].float().cpu().numpy()]))

    def picture_sheet(self, pictures: list) -> np.ndarray:
        lines = []
        for left, predicted, right, disparity in pictures:
            cells = [np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8) for x in (left, predicted, right)]
            cells.append(disparity_picture(disparity, self.hparams.disparity_min, self.hparams.disparity_max))
            lines.append(np.concatenate(cells, axis=1))
        return np.repeat(np.concatenate(lines, axis=0)[..., None], 3, axis=-1)
