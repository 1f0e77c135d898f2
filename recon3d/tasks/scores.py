"""Scores in shape space shared by the tasks' validation and the evaluation tables: voxel IoU against the stored
voxels, surface scores of decoded grids, and per-category means gathered over ranks."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from recon3d.geometry.extract import grid_to_mesh
from recon3d.geometry.metrics import batch_iou, sample_surface, surface_metrics


def voxel_iou(pred: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    """Per-shape IoU (B,) of occupancy pred (B, r, r, r) against stored voxels (B, 1, R, R, R) pooled to r by majority
    (1 when both are empty); a prediction finer than the stored voxels is pooled to R the same way."""
    factor = voxels.shape[-1] // pred.shape[-1]
    if factor == 0:  # e.g. the image encoder's default 32^3 grid on 16^3 shards
        pred = F.avg_pool3d(pred.float()[:, None], pred.shape[-1] // voxels.shape[-1])[:, 0]
        factor = 1
    target = F.avg_pool3d(voxels.float(), factor)[:, 0] > 0.5  # float: CPU has no bf16 pool
    return batch_iou(pred > 0.5, target).float()


def surface_scores(grids: np.ndarray, surfaces: np.ndarray, points: int = 2048) -> Tuple[List[float], List[float]]:
    """Per shape: Chamfer-L2 x1000 (IM-NET convention) and F-score@1 % between the mesh of each occupancy grid
    (cell centres) and the stored surface samples; NaN and 0 for an empty mesh."""
    rng = np.random.default_rng(0)
    chamfers, fscores = [], []
    for grid, surface in zip(grids, surfaces):
        verts, faces = grid_to_mesh(grid, 0.5, corners=False)
        if len(faces) == 0:
            chamfers.append(float("nan"))
            fscores.append(0.0)
            continue
        pred, _ = sample_surface(verts, faces, points, rng)
        target = surface[rng.choice(len(surface), min(points, len(surface)), replace=False)]
        metrics = surface_metrics(pred, target, thresholds=(0.01,))
        chamfers.append(1000.0 * metrics["chamfer_l2"])
        fscores.append(metrics["fscore@1%"])
    return chamfers, fscores


class CategoryScores:
    """Per-shape scores collected over an epoch on every rank, then means per category and over categories.

    Categories need not be known in advance: at the end the (category, scores) rows of all ranks are gathered.
    """

    def __init__(self) -> None:
        self.rows: List[Tuple[str, dict]] = []

    def add(self, keys: Sequence[str], **scores: torch.Tensor) -> None:
        values = {name: score.detach().double().cpu().tolist() for name, score in scores.items()}
        for i, key in enumerate(keys):
            self.rows.append((key.split("/")[0], {name: v[i] for name, v in values.items()}))

    def summary(self, prefix: str) -> dict:
        """{prefix/name: mean over categories of the per-category means, prefix/name/category: ...} over all
        ranks (a collective call under DDP: every rank must make it)."""
        rows = self.rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        out = {}
        for name, means in category_means(rows).items():
            out[f"{prefix}/{name}"] = nan_mean(list(means.values()))
            out.update({f"{prefix}/{name}/{c}": m for c, m in means.items() if not np.isnan(m)})
        return out


def category_means(rows: Sequence[Tuple[str, dict]]) -> dict:
    """{score name: {category: mean}} of (category, {name: value}) rows, categories sorted; NaN values (a shape
    without a mesh has no Chamfer distance) are left out, and a category with none gets NaN."""
    by_category: dict = {}
    for category, scores in rows:
        for name, value in scores.items():
            by_category.setdefault(name, {}).setdefault(category, []).append(float(value))
    return {name: {c: nan_mean(v) for c, v in sorted(categories.items())} for name, categories in by_category.items()}


def nan_mean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN; NaN when none is."""
    finite = [float(v) for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
