"""The metrics the papers report, with their conventions stated.

Voxels: IoU, precision, recall, F1 on occupancy; MSE between predicted occupancy values and 0/1 targets.
Surfaces (point sets sampled on the predicted and the ground-truth surface, positions in the unit cube):
    chamfer_l2   IM-NET's convention: squared Euclidean nearest-neighbour distances, the mean over each direction,
                 then the mean of the two directions. Papers report it x1000 (see `report_scale`) on 4096 points.
    chamfer_l1   OccNet's "Chamfer-L1": Euclidean (not squared) distances, the mean of accuracy (pred -> gt) and
                 completeness (gt -> pred). OccNet uses 100k points per surface.
    normal_consistency  mean |n_pred . n_gt| of nearest neighbours, averaged over both directions (1 is best);
                 the absolute value because real meshes have inconsistent winding.
    fscore@t     2PR / (P + R) with P = share of predicted points within t of the ground truth, R the converse;
                 t as a fraction of the cube edge (1 %, 1.5 %, 2 % here: t = 0.01, 0.015, 0.02 in unit-cube units).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

FSCORE_THRESHOLDS = (0.01, 0.015, 0.02)
report_scale = {"chamfer_l2": 1000.0}  # multiply before printing, as IM-NET reports it


def batch_iou(pred, target):
    """Per-item intersection over union (B,) of boolean occupancy pred and target, both (B, ...) numpy arrays or
    torch tensors of one shape; 1 where both are empty (nothing to get wrong).

    Raises:
        ValueError: shapes differ.
    """
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    inter = (pred & target).reshape(pred.shape[0], -1).sum(1) * 1.0
    union = (pred | target).reshape(pred.shape[0], -1).sum(1) * 1.0
    return inter / (union + (union == 0)) + (union == 0)


def voxel_metrics(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> Dict[str, float]:
    """IoU, precision, recall, F1 of occupancy and MSE of values.

    Args:
        pred: occupancy values in [0, 1] (any shape); target: 0/1 of the same shape.

    Raises:
        ValueError: shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    pred_occ = pred > threshold
    true_occ = target > 0.5
    tp = float(np.logical_and(pred_occ, true_occ).sum())
    fp = float(np.logical_and(pred_occ, ~true_occ).sum())
    fn = float(np.logical_and(~pred_occ, true_occ).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {"iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "mse": float(np.mean((pred.astype(np.float64) - true_occ) ** 2))}


def _check_points(name: str, points: np.ndarray) -> None:
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"{name} must be a non-empty (P, 3) array, got {points.shape}")


def surface_metrics(pred: np.ndarray, target: np.ndarray, pred_normals: Optional[np.ndarray] = None,
                    target_normals: Optional[np.ndarray] = None,
                    thresholds: Sequence[float] = FSCORE_THRESHOLDS) -> Dict[str, float]:
    """Chamfer (both conventions), normal consistency (when normals are given) and F-scores of two point sets.

    Args:
        pred: (P, 3) points on the predicted surface; target: (Q, 3) on the ground truth.
        pred_normals, target_normals: (P, 3) and (Q, 3) unit normals, optional.

    Raises:
        ValueError: empty or wrongly shaped inputs.
    """
    _check_points("pred", pred)
    _check_points("target", target)
    d_pred, i_pred = cKDTree(target).query(pred, workers=1)  # pred -> nearest target
    d_true, i_true = cKDTree(pred).query(target, workers=1)
    out = {"chamfer_l2": 0.5 * (float(np.mean(d_pred**2)) + float(np.mean(d_true**2))),
           "chamfer_l1": 0.5 * (float(np.mean(d_pred)) + float(np.mean(d_true)))}
    if pred_normals is not None and target_normals is not None:
        a = np.abs((pred_normals * target_normals[i_pred]).sum(1)).mean()
        b = np.abs((target_normals * pred_normals[i_true]).sum(1)).mean()
        out["normal_consistency"] = 0.5 * float(a + b)
    for t in thresholds:
        precision = float(np.mean(d_pred < t))
        recall = float(np.mean(d_true < t))
        f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[f"fscore@{100 * t:g}%"] = f
    return out


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` points uniformly on a triangle mesh (area-weighted) and their face normals, (count, 3) each.

    Raises:
        ValueError: a mesh with no area.
    """
    tri = vertices[faces].astype(np.float64)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(cross, axis=1)
    if not np.isfinite(area.sum()) or area.sum() <= 0:
        raise ValueError("cannot sample a surface with no area")
    face = rng.choice(len(faces), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[face] / np.maximum(area[face], 1e-30)[:, None]
    return points, normals


def pairwise_chamfer_l2(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """(len(a), len(b)) matrix of IM-NET-convention Chamfer-L2 between every point set of `a` and of `b`.

    Each point set is (P, 3); sets within `a` (and within `b`) must have equal sizes so they stack. Squared distances
    come from one product per pair, [x, |x|^2, 1] . [-2y, 1, |y|^2] = |x - y|^2, whose (P, Q) block stays in cache
    (faster than torch.cdist of one set against all, the same values to 2e-7: docs/results.md, latent GAN).
    """
    left = torch.as_tensor(np.stack(a), dtype=torch.float32)
    right = torch.as_tensor(np.stack(b), dtype=torch.float32)
    left = torch.cat([left, left.square().sum(-1, keepdim=True), torch.ones_like(left[..., :1])], -1)  # (A, P, 5)
    right = torch.cat([-2 * right, torch.ones_like(right[..., :1]), right.square().sum(-1, keepdim=True)], -1)
    right = right.transpose(1, 2).contiguous()  # (B, 5, Q)
    out = torch.empty(len(left), len(right), dtype=torch.float64)
    for i, points in enumerate(left):
        for j, others in enumerate(right):
            d = (points @ others).clamp_min_(0)  # (P, Q) squared distances
            out[i, j] = 0.5 * (d.amin(1).mean() + d.amin(0).mean())
    return out.numpy()


def nearest_references(distances: np.ndarray, rows=None) -> set:
    """The reference shapes (columns) that are the nearest of some generated shape among `rows` (all when None) of a
    (generated, reference) distance matrix; a row of inf (an empty sample, no surface) matches none."""
    block = distances if rows is None else distances[list(rows)]
    block = block[np.isfinite(block).any(axis=1)]
    return set(block.argmin(axis=1).tolist())


def coverage_and_mmd(distances: np.ndarray) -> Dict[str, float]:
    """GAN set metrics (Achlioptas et al. 2018) from a (generated, reference) distance matrix.

    cov: the share of reference shapes that are the nearest reference of at least one generated shape (higher is
    better); mmd: the mean over reference shapes of the distance to their nearest generated shape (lower is better).
    Rows of inf (empty samples) match no reference.
    """
    if distances.ndim != 2 or 0 in distances.shape:
        raise ValueError(f"need a non-empty (generated, reference) matrix, got {distances.shape}")
    return {"cov": len(nearest_references(distances)) / distances.shape[1],
            "mmd": float(distances.min(axis=0).mean())}
