"""Meshes from an implicit field: coarse-to-fine evaluation on a grid, then marching cubes.

The field is evaluated on a coarse grid of corners; each finer level (twice the resolution) starts from the
trilinear upsampling of the previous one and evaluates exactly only the corners of cells that straddle the
threshold or come within `band` of it (dilated by one cell). The band matters for thin parts of a learned field:
a chair leg or a wing can peak between coarse samples, whose values then stay just below the threshold. Far from
the surface the interpolated values keep the right side of the threshold, which is all marching cubes needs there.
Everything is batched and vectorised in torch; no per-cell Python loop.
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
    """The field on a resolution^3 grid, evaluated exactly only near the threshold surface.

    Args:
        field: maps (P, 3) points to (P,) values; called on batches of at most `batch_points`.
        resolution: final cells per edge; coarse * 2^k for some k >= 0.
        coarse: cells per edge of the first, fully evaluated grid.
        band: also refine cells whose corners come within this of the threshold without crossing it.

    Raises:
        ValueError: resolution is not coarse times a power of two.
    """
    levels = int(round(np.log2(resolution / coarse)))
    if levels < 0 or coarse * 2**levels != resolution:
        raise ValueError(f"resolution {resolution} must be coarse ({coarse}) times a power of two")
    n = coarse
    values = dense_grid(field, n, batch_points=batch_points, device=device)
    grid = torch.as_tensor(values.values, device=device)
    evaluated = values.evaluated
    exact = torch.ones_like(grid, dtype=torch.bool)
    for _ in range(levels):
        corners = grid.unfold(0, 2, 1).unfold(1, 2, 1).unfold(2, 2, 1).reshape(n, n, n, 8)
        high, low = corners.amax(-1), corners.amin(-1)
        active = (high > threshold - band) & (low < threshold + band)  # crossing, or close enough to hide one
        active = F.max_pool3d(active[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        n *= 2
        grid = F.interpolate(grid[None, None], size=(n + 1,) * 3, mode="trilinear", align_corners=True)[0, 0]
        old_exact = torch.zeros((n + 1,) * 3, dtype=torch.bool, device=device)
        old_exact[::2, ::2, ::2] = exact
        fine_cells = active.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
        touched = F.max_pool3d(F.pad(fine_cells[None, None].float(), (1, 1, 1, 1, 1, 1)), 2, stride=1)[0, 0] > 0
        todo = touched & ~old_exact
        index = todo.nonzero(as_tuple=True)
        points = torch.stack(index, dim=-1).float() / n - 0.5
        grid[index] = _evaluate(field, points, batch_points)
        evaluated += len(points)
        exact = old_exact | todo
    return FieldGrid(grid.cpu().numpy(), evaluated)


def grid_to_mesh(grid: np.ndarray, threshold: float = 0.5, *, corners: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes (scikit-image) on a grid over [-0.5, 0.5]^3: vertices (V, 3) float32, faces (F, 3).

    corners=True: values at the N+1 corners -0.5 + i / N; False: values at the N cell centres (i + 0.5) / N - 0.5.
    Returns empty arrays when the threshold surface does not cross the grid.
    """
    from skimage.measure import marching_cubes

    if not (grid.min() < threshold < grid.max()):
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    # pad with "outside" so that shapes touching the border still close
    padded = np.pad(grid, 1, constant_values=min(float(grid.min()), threshold - 1.0))
    verts, faces, _, _ = marching_cubes(padded, level=threshold)
    if corners:
        verts = (verts - 1.0) / (grid.shape[0] - 1) - 0.5
    else:
        verts = (verts - 0.5) / grid.shape[0] - 0.5
    return verts.astype(np.float32), faces.astype(np.int64)
