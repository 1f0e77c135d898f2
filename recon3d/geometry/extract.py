"""Meshes from an implicit field: coarse-to-fine evaluation on a grid, then marching cubes.

The field is evaluated on a coarse frame of corners (32^3 cells), then refined level by level (32 -> 64 -> 128 ->
256): each level doubles the grid by trilinear upsampling and evaluates exactly the new corners of the cells that
straddle the threshold or come within a band of it, in large batches. The band matters for thin parts of a learned
field: a chair leg or a wing can peak between frame samples, whose values then stay just below the threshold. Far
from the surface the interpolated values keep the right side of the threshold, which is all marching cubes needs
there. Everything is batched and vectorised in torch; no per-cell Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

Field = Callable[[torch.Tensor], torch.Tensor]  # (P, 3) points in [-0.5, 0.5] -> (P,) values


@dataclass
class FieldGrid:
    values: np.ndarray  # (N+1, N+1, N+1) float32 at corners -0.5 + i / N
    evaluated: int  # how many points the field was evaluated at


def _evaluate(field: Field, points: torch.Tensor, batch_points: int) -> torch.Tensor:
    out = [field(points[i:i + batch_points]).reshape(-1).float() for i in range(0, len(points), batch_points)]
    return torch.cat(out) if out else points.new_zeros(0)


def _corners(n: int, device) -> torch.Tensor:
    axis = torch.linspace(-0.5, 0.5, n + 1, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


@torch.no_grad()
def dense_grid(field: Field, resolution: int, *, batch_points: int = 65536, device="cpu") -> FieldGrid:
    """The field at every corner of a resolution^3 grid (the reference the coarse-to-fine grid must match)."""
    points = _corners(resolution, device).reshape(-1, 3)
    values = _evaluate(field, points, batch_points).reshape((resolution + 1,) * 3)
    return FieldGrid(values.cpu().numpy(), len(points))


@torch.no_grad()
def coarse_to_fine_grid(field: Field, resolution: int = 256, *, coarse: int = 32, threshold: float = 0.5,
                        band: float = 0.3, batch_points: int = 65536, device="cpu") -> FieldGrid:
    """The field on a resolution^3 corner grid, evaluated exactly only in cells near the threshold surface.

    The frame (coarse^3 cells) is evaluated everywhere; then, level by level, the grid is doubled: values are
    trilinearly upsampled and the new corners of every cell that straddles the threshold, or comes within the
    level's band of it, are evaluated exactly. The band halves with the cell size (a smooth field changes across a
    cell in proportion to its size).

    Args:
        field: maps (P, 3) points to (P,) values; called on batches of at most `batch_points`.
        resolution: final cells per edge, `coarse` times a power of two.
        coarse: cells per edge of the frame, evaluated everywhere.
        band: at the frame, also refine cells whose corners come within this of the threshold without crossing it.

    Raises:
        ValueError: resolution is not coarse times a power of two.
    """
    levels = resolution // coarse
    if resolution % coarse or levels & (levels - 1):
        raise ValueError(f"resolution {resolution} must be coarse ({coarse}) times a power of two")
    frame = dense_grid(field, coarse, batch_points=batch_points, device=device)
    values, evaluated, n = torch.as_tensor(frame.values, device=device), frame.evaluated, coarse
    while n < resolution:
        active = _cells_near(values, threshold, band * coarse / n)
        values = F.interpolate(values[None, None], size=(2 * n + 1,) * 3, mode="trilinear", align_corners=True)[0, 0]
        n *= 2
        linear = _new_corners(active, n)
        if len(linear):
            side = n + 1
            ijk = torch.stack([linear // (side * side), (linear // side) % side, linear % side], dim=-1)
            values.view(-1)[linear] = _evaluate(field, ijk.float() / n - 0.5, batch_points)
            evaluated += len(linear)
    return FieldGrid(values.cpu().numpy(), evaluated)


def _cells_near(values: torch.Tensor, threshold: float, band: float) -> torch.Tensor:
    """(N, N, N) bool: cells of an (N+1)^3 corner grid whose corners straddle threshold or come within band."""
    n = values.shape[0] - 1
    corners = values.unfold(0, 2, 1).unfold(1, 2, 1).unfold(2, 2, 1).reshape(n, n, n, 8)
    return (corners.amax(-1) > threshold - band) & (corners.amin(-1) < threshold + band)


def _new_corners(active: torch.Tensor, n: int) -> torch.Tensor:
    """Linear indices into an (n+1)^3 grid of the corners of the halved `active` cells that the coarser grid did
    not have (at least one odd index): the even ones are corners of active cells, already exact."""
    cells = active.nonzero()
    offsets = torch.stack(torch.meshgrid(*[torch.arange(3, device=active.device)] * 3, indexing="ij"), -1)
    offsets = offsets.reshape(-1, 3)
    offsets = offsets[(offsets % 2).any(-1)]
    side = n + 1
    ijk = cells[:, None, :] * 2 + offsets[None]
    return torch.unique(ijk.reshape(-1, 3) @ torch.tensor([side * side, side, 1], device=active.device))


def grid_to_mesh(grid: np.ndarray, threshold: float = 0.5, *, corners: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes (scikit-image) on a grid over [-0.5, 0.5]^3: vertices (V, 3) float32, faces (F, 3).

    corners=True: values at the N+1 corners -0.5 + i / N; False: values at the N cell centres (i + 0.5) / N - 0.5
    (N per axis: the grid may be a box).
    Returns empty arrays when the threshold surface does not cross the grid.
    """
    from skimage.measure import marching_cubes

    if not (grid.min() < threshold < grid.max()):
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    # pad with "outside" so that shapes touching the border still close
    padded = np.pad(grid, 1, constant_values=min(float(grid.min()), threshold - 1.0))
    verts, faces, _, _ = marching_cubes(padded, level=threshold)
    shape = np.asarray(grid.shape, dtype=np.float64)
    if corners:
        verts = (verts - 1.0) / (shape - 1) - 0.5
    else:
        verts = (verts - 0.5) / shape - 0.5
    return verts.astype(np.float32), faces.astype(np.int64)
