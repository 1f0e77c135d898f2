"""The baseline every shape model must clear: the training set's mean shape.

The voxel-wise mean occupancy of the training shapes (the first MAX_SHAPES in manifest order), thresholded where it
scores best on those same shapes. Scored against each evaluated shape like a prediction, it is the IoU a model earns
by answering one average shape whatever it is shown; evaluations put it beside their own IoU as iou_mean_shape.
For VRN the same is done with the training shapes' view-aligned volumes (an average shape in the camera frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from recon3d.data.loading.datamodule import iter_split
from recon3d.data.loading.shards import first_split, load_manifest
from recon3d.geometry.metrics import batch_iou

MAX_SHAPES = 2000  # enough for a mean; bounds the two passes over a large training split
THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)


def fitted_mean(targets: Callable[[], Iterator[torch.Tensor]]) -> torch.Tensor:
    """The mean of the bool targets (B, ...) that `targets()` yields, thresholded at the value of THRESHOLDS with
    the best mean IoU on those same targets (two passes). Raises ValueError when it yields none."""
    total, count = None, 0
    for batch in targets():
        total = batch.float().sum(0) + (0 if total is None else total)
        count += len(batch)
    if not count:
        raise ValueError("no training shapes to average")
    mean = total / count
    scores = np.zeros(len(THRESHOLDS))
    for batch in targets():
        for k, threshold in enumerate(THRESHOLDS):
            shape = (mean > float(threshold))[None].expand_as(batch)
            scores[k] += float(batch_iou(shape, batch).sum())
    return mean > float(THRESHOLDS[int(np.argmax(scores))])


def _limited(batches: Iterator[dict], pick: Callable[[dict], torch.Tensor]) -> Iterator[torch.Tensor]:
    seen = 0
    for batch in batches:
        target = pick(batch)[: MAX_SHAPES - seen]
        seen += len(target)
        yield target
        if seen >= MAX_SHAPES:
            return


def pooled_voxels(voxels: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid, grid, grid) bool: stored voxels (B, 1, R, R, R) pooled to grid by majority (as the IoUs are)."""
    return F.avg_pool3d(voxels.float(), max(1, voxels.shape[-1] // grid))[:, 0] > 0.5


def training_split(shard_dir: str | Path) -> str:
    """The split the baseline averages: train (else val, else test, for folders made of one split)."""
    return first_split(load_manifest(shard_dir), ("train", "val", "test"))


def mean_voxels(shard_dir: str | Path, grid: int) -> torch.Tensor:
    """(grid, grid, grid) bool: the training set's mean shape at the evaluation grid."""
    split = training_split(shard_dir)
    return fitted_mean(lambda: _limited(iter_split(shard_dir, split, 16), lambda b: pooled_voxels(b["voxels"], grid)))


def mean_volume(shard_dir: str | Path, **view_options) -> torch.Tensor:
    """(D, G, G) bool: the mean of the training shapes' view-aligned volumes (each shape's evaluation view)."""
    split = training_split(shard_dir)
    return fitted_mean(lambda: _limited(iter_split(shard_dir, split, 16, **view_options),
                                        lambda b: b["volume"] > 0.5))


def mean_shape_iou(mean: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-target IoU (B,) of the mean shape (...) against bool targets (B, ...)."""
    mean = mean.to(targets.device)
    return batch_iou(mean[None].expand_as(targets), targets).float()
