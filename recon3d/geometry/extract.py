"""Meshes from an implicit field: coarse-to-fine evaluation on a grid, then marching cubes.

The field is evaluated on a coarse frame of corners (32^3 cells), then refined level by level (32 -> 64 -> 128 ->
256): each level doubles the grid by trilinear upsampling and evaluates exactly the corners of the cells that
straddle the threshold or come within a band of it, in large batches. The band matters for thin parts of a learned
field: a chair leg or a wing can peak between frame samples, whose values then stay just below the threshold. Far
from the surface the interpolated values keep the right side of the threshold, which is all marching cubes needs
there. The levels after the first trace the surface instead, cell by cell: only the cells the upsampled values
put on the surface are evaluated, then any cell whose exact corners show the surface running on into it, until none
is left (about half the points of refining whole cells, with the same occupancy). Everything is batched and
vectorised in torch; no per-cell Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import marching_cubes

from recon3d.hardware import available_memory

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


BYTES_PER_CORNER = 10  # peak memory of an extraction per grid corner: its values, exact and known masks and the
# interpolation's temporaries (10.8 GB measured at 1024^3, issue 38's probe: 1025^3 corners)


def check_memory(resolution: int, device="cpu") -> None:
    """Refuse, before allocating, an extraction grid the device has no room for.

    Raises:
        ValueError: with the estimate and what is available.
    """
    need = BYTES_PER_CORNER * (resolution + 1) ** 3
    available = available_memory(device)
    if available and need > available:
        raise ValueError(f"resolution {resolution}: an extraction needs about {need / 2**30:.1f} GiB, "
                         f"{available / 2**30:.1f} GiB are available; use a smaller --resolution")


@torch.no_grad()
def coarse_to_fine_grid(field: Field, resolution: int = 256, *, coarse: int = 32, threshold: float = 0.5,
                        band: float = 0.3, follow: bool = True, batch_points: int = 65536,
                        device="cpu") -> FieldGrid:
    """The field on a resolution^3 corner grid, evaluated exactly only in cells near the threshold surface.

    The frame (coarse^3 cells) is evaluated everywhere; then, level by level, the grid is doubled: values are
    trilinearly upsampled and every corner not yet exact of each cell that straddles the threshold, or comes within
    the level's band of it, is evaluated. The band halves with the cell size (a smooth field changes across a cell
    in proportion to its size). With `follow`, the surface is then followed: a cell left out whose exact corners
    (those it shares with evaluated cells) straddle the threshold is evaluated too, until no such cell is left, so
    that wherever the evaluated surface runs on into cells the interpolation judged far from it (a thin leg off a
    seat), it is traced instead of cut.

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
    check_memory(resolution, device)
    frame = dense_grid(field, coarse, batch_points=batch_points, device=device)
    values, evaluated, n = torch.as_tensor(frame.values, device=device), frame.evaluated, coarse
    exact = torch.ones_like(values, dtype=torch.bool)
    while n < resolution:
        trace = follow and n > coarse  # past the first level: trace the surface cell by cell
        active = None if trace else _cells_near(values, threshold, band * coarse / n)
        values = F.interpolate(values[None, None], size=(2 * n + 1,) * 3, mode="trilinear", align_corners=True)[0, 0]
        known = torch.zeros_like(values, dtype=torch.bool)
        known[::2, ::2, ::2] = exact
        exact, n = known, 2 * n
        if trace:
            evaluated += _trace_surface(field, values, exact, threshold, batch_points)
            continue
        done = active
        while active.any():
            evaluated += _evaluate_cells(field, values, exact, active, batch_points)
            if not follow:
                break
            active = _straddling(values, exact, threshold) & ~done
            done = done | active
    return FieldGrid(values.cpu().numpy(), evaluated)


def _evaluate_cells(field: Field, values: torch.Tensor, exact: torch.Tensor, cells: torch.Tensor,
                    batch_points: int) -> int:
    """Evaluate every corner of the halved `cells` ((N/2)^3 bool over an (N+1)^3 grid) not yet exact, in place;
    returns how many."""
    need = torch.zeros_like(exact)
    half = cells.shape[0]
    for i in range(3):
        for j in range(3):
            for k in range(3):
                need[i:i + 2 * half:2, j:j + 2 * half:2, k:k + 2 * half:2] |= cells
    return _evaluate_corners(field, values, exact, need, batch_points)


def _evaluate_corners(field: Field, values: torch.Tensor, exact: torch.Tensor, need: torch.Tensor,
                      batch_points: int) -> int:
    """Evaluate the corners `need` marks that are not exact yet ((N+1)^3 bool), in place; returns how many."""
    linear = (need & ~exact).view(-1).nonzero()[:, 0]
    if len(linear):
        n = values.shape[0] - 1
        side = n + 1
        ijk = torch.stack([linear // (side * side), (linear // side) % side, linear % side], dim=-1)
        values.view(-1)[linear] = _evaluate(field, ijk.float() / n - 0.5, batch_points)
        exact.view(-1)[linear] = True
    return len(linear)


def _trace_surface(field: Field, values: torch.Tensor, exact: torch.Tensor, threshold: float,
                   batch_points: int) -> int:
    """A level past the first: evaluate the corners of the cells that straddle the threshold by the upsampled
    values, then of every cell whose exact corners straddle it while others are not exact yet, until there is none
    (the surface followed where the upsampling misplaced it); returns the points evaluated."""
    evaluated = 0
    above = _any_corner(values > threshold)
    cells = above & ~_all_corners(values > threshold)
    while True:
        count = _evaluate_corners(field, values, exact, _corner_mask(cells), batch_points)
        if not count:
            return evaluated
        evaluated += count
        cells = (_any_corner(exact & (values > threshold)) & _any_corner(exact & (values <= threshold))
                 & _any_corner(~exact))


def _any_corner(corners: torch.Tensor) -> torch.Tensor:
    """(N, N, N) bool: cells of an (N+1)^3 bool corner grid with at least one corner set (separable max)."""
    out = corners[1:] | corners[:-1]
    out = out[:, 1:] | out[:, :-1]
    return out[:, :, 1:] | out[:, :, :-1]


def _all_corners(corners: torch.Tensor) -> torch.Tensor:
    return ~_any_corner(~corners)


def _corner_mask(cells: torch.Tensor) -> torch.Tensor:
    """(N+1)^3 bool: the corners of the (N, N, N) `cells`."""
    n = cells.shape[0]
    mask = torch.zeros((n + 1,) * 3, dtype=torch.bool, device=cells.device)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                mask[i:i + n, j:j + n, k:k + n] |= cells
    return mask


def _straddling(values: torch.Tensor, exact: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N/2)^3 bool: halved cells (3^3 corners each) whose exact corners hold values on both sides of threshold."""
    blocks = lambda grid: grid.unfold(0, 3, 2).unfold(1, 3, 2).unfold(2, 3, 2).flatten(3)  # noqa: E731
    above = blocks(exact & (values > threshold)).any(-1)
    below = blocks(exact & (values <= threshold)).any(-1)
    return above & below


def _cells_near(values: torch.Tensor, threshold: float, band: float) -> torch.Tensor:
    """(N, N, N) bool: cells of an (N+1)^3 corner grid whose corners straddle threshold or come within band."""
    n = values.shape[0] - 1
    corners = values.unfold(0, 2, 1).unfold(1, 2, 1).unfold(2, 2, 1).reshape(n, n, n, 8)
    return (corners.amax(-1) > threshold - band) & (corners.amin(-1) < threshold + band)


def grid_to_mesh(grid: np.ndarray, threshold: float = 0.5, *, corners: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes (scikit-image) on a grid over [-0.5, 0.5]^3: vertices (V, 3) float32, faces (F, 3).

    corners=True: values at the N+1 corners -0.5 + i / N; False: values at the N cell centres (i + 0.5) / N - 0.5
    (N per axis: the grid may be a box).
    Returns empty arrays when the threshold surface does not cross the grid.
    """
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
