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
from typing import Callable, List

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import marching_cubes

from recon3d.hardware import available_memory

Field = Callable[[torch.Tensor], torch.Tensor]  # (P, 3) points in [-0.5, 0.5] -> (P,) values
BatchField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # and (P,) shape indices -> (P,) values


@dataclass
class FieldGrid:
    values: np.ndarray  # (N+1, N+1, N+1) float32 at corners -0.5 + i / N
    evaluated: int  # how many points the field was evaluated at


def _evaluate(field: BatchField, points: torch.Tensor, shape: torch.Tensor, batch_points: int) -> torch.Tensor:
    out = [field(points[i:i + batch_points], shape[i:i + batch_points]).reshape(-1).float()
           for i in range(0, len(points), batch_points)]
    return torch.cat(out) if out else points.new_zeros(0)


def _corners(n: int, device) -> torch.Tensor:
    axis = torch.linspace(-0.5, 0.5, n + 1, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def one_shape(field: Field) -> BatchField:
    """The field of one shape as a field of many (the shape index ignored)."""
    return lambda points, shape: field(points)


@torch.no_grad()
def dense_grid(field: Field, resolution: int, *, batch_points: int = 65536, device="cpu") -> FieldGrid:
    """The field at every corner of a resolution^3 grid (the reference the coarse-to-fine grid must match)."""
    points = _corners(resolution, device).reshape(-1, 3)
    shape = torch.zeros(len(points), dtype=torch.long, device=device)
    values = _evaluate(one_shape(field), points, shape, batch_points).reshape((resolution + 1,) * 3)
    return FieldGrid(values.cpu().numpy(), len(points))


BYTES_PER_CORNER = 10  # peak memory of an extraction per grid corner: its values, exact and known masks and the
# interpolation's temporaries (10.8 GB measured at 1024^3, issue 38's probe: 1025^3 corners)


def grid_bytes(resolution: int) -> int:
    """Peak memory of one shape's extraction at resolution^3 (what a batch of shapes needs per shape)."""
    return BYTES_PER_CORNER * (resolution + 1) ** 3


def check_memory(resolution: int, device="cpu", shapes: int = 1) -> None:
    """Refuse, before allocating, an extraction grid the device has no room for.

    Raises:
        ValueError: with the estimate and what is available.
    """
    need = shapes * grid_bytes(resolution)
    available = available_memory(device)
    if available and need > available:
        many = f" x {shapes} shapes" if shapes > 1 else ""
        raise ValueError(f"resolution {resolution}{many}: an extraction needs about {need / 2**30:.1f} GiB, "
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
    return coarse_to_fine_grids(one_shape(field), 1, resolution, coarse=coarse, threshold=threshold, band=band,
                                follow=follow, batch_points=batch_points, device=device)[0]


@torch.no_grad()
def coarse_to_fine_grids(field: BatchField, shapes: int, resolution: int = 256, *, coarse: int = 32,
                         threshold: float = 0.5, band: float = 0.3, follow: bool = True, batch_points: int = 65536,
                         device="cpu", on_device: bool = False) -> List[FieldGrid]:
    """coarse_to_fine_grid of many shapes at once: the same grids, the same points per shape, but each level's
    points of all shapes go to the field together (few large calls instead of many small ones: what a GPU needs).

    Args:
        field: maps (P, 3) points and (P,) shape indices in 0..shapes-1 to (P,) values.
        on_device: each FieldGrid's values stay a tensor on `device` (for marching.corner_grid_mesh) instead of
            numpy.
    """
    levels = resolution // coarse
    if resolution % coarse or levels & (levels - 1):
        raise ValueError(f"resolution {resolution} must be coarse ({coarse}) times a power of two")
    check_memory(resolution, device, shapes)
    side = coarse + 1
    values = torch.empty((shapes, side, side, side), device=device)
    exact = torch.zeros_like(values, dtype=torch.bool)
    evaluated = _evaluate_corners(field, values, exact, torch.ones_like(exact), batch_points)
    n = coarse
    while n < resolution:
        trace = follow and n > coarse  # past the first level: trace the surface cell by cell
        active = None if trace else _cells_near(values, threshold, band * coarse / n)
        values = F.interpolate(values[:, None], size=(2 * n + 1,) * 3, mode="trilinear", align_corners=True)[:, 0]
        known = torch.zeros_like(values, dtype=torch.bool)
        known[:, ::2, ::2, ::2] = exact
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
    values = values if on_device else values.cpu().numpy()
    return [FieldGrid(values[b], int(count)) for b, count in enumerate(evaluated.tolist())]


def _evaluate_cells(field: BatchField, values: torch.Tensor, exact: torch.Tensor, cells: torch.Tensor,
                    batch_points: int) -> torch.Tensor:
    """Evaluate every corner of the halved `cells` ((B, N/2, N/2, N/2) bool over (B, N+1, N+1, N+1) grids) not yet
    exact, in place; returns how many per shape."""
    need = torch.zeros_like(exact)
    half = cells.shape[1]
    for i in range(3):
        for j in range(3):
            for k in range(3):
                need[:, i:i + 2 * half:2, j:j + 2 * half:2, k:k + 2 * half:2] |= cells
    return _evaluate_corners(field, values, exact, need, batch_points)


def _evaluate_corners(field: BatchField, values: torch.Tensor, exact: torch.Tensor, need: torch.Tensor,
                      batch_points: int) -> torch.Tensor:
    """Evaluate the corners `need` marks that are not exact yet ((B, N+1, N+1, N+1) bool), in place; returns how
    many per shape (B,)."""
    linear = _evaluate_linear(field, values, exact, (need & ~exact).view(-1).nonzero()[:, 0], batch_points)
    return torch.bincount(linear // values[0].numel(), minlength=values.shape[0])


def _evaluate_linear(field: BatchField, values: torch.Tensor, exact: torch.Tensor, linear: torch.Tensor,
                     batch_points: int) -> torch.Tensor:
    """Evaluate the corners at flat indices `linear` of (B, S, S, S) grids (none exact yet), in place; returns them."""
    side = values.shape[1]
    if len(linear):
        within, ijk = _grid_index(linear, side)
        values.view(-1)[linear] = _evaluate(field, ijk.float() / (side - 1) - 0.5, linear // side ** 3,
                                            batch_points)
        exact.view(-1)[linear] = True
    return linear


def _trace_surface(field: BatchField, values: torch.Tensor, exact: torch.Tensor, threshold: float,
                   batch_points: int) -> torch.Tensor:
    """A level past the first: evaluate the corners of the cells that straddle the threshold by the upsampled
    values, then of every cell whose exact corners straddle it while others are not exact yet, until there is none
    (the surface followed where the upsampling misplaced it); returns the points evaluated per shape.

    Past the first round only the cells around the corners just evaluated are looked at (unless so many were that
    the whole grid costs less memory): every cell the previous round chose has all its corners exact now, and a
    cell none of whose corners changed cannot have become one (the first round's cells include every cell whose
    exact corners straddle, as the upsampling keeps their values).
    """
    above = values > threshold
    cells = any_corner(above) & ~_all_corners(above)
    need = (_corner_mask(cells) & ~exact).view(-1).nonzero()[:, 0]
    new = _evaluate_linear(field, values, exact, need, batch_points)
    shapes, side = values.shape[0], values.shape[1]
    evaluated = torch.zeros(shapes, dtype=torch.long, device=values.device)
    while len(new):
        evaluated += torch.bincount(new // side ** 3, minlength=shapes)
        if len(new) * SPARSE_BYTES_PER_CORNER > values.numel() * BYTES_PER_CORNER:  # the grid-wide test costs less
            cells = (any_corner(exact & (values > threshold)) & any_corner(exact & (values <= threshold))
                     & any_corner(~exact))
            todo = (_corner_mask(cells) & ~exact).view(-1).nonzero()[:, 0]
        else:
            corners = _corners_of(_cells_around(new, side), side)  # (M, 8) flat corner indices
            known = exact.view(-1)[corners]
            high = values.view(-1)[corners] > threshold
            chosen = (known & high).any(1) & (known & ~high).any(1) & (~known).any(1)
            todo = corners[chosen][~known[chosen]].unique()
        new = _evaluate_linear(field, values, exact, todo, batch_points)
    return evaluated


SPARSE_BYTES_PER_CORNER = 600  # peak memory of _trace_surface's sparse round per corner just evaluated (the cells
# around it, their corners, their flags); a round whose new corners would need more than the grid itself looks at the
# whole grid instead, which finds the same cells (the batched extraction's peak stays BYTES_PER_CORNER's)


_OFFSETS = [(i, j, k) for i in range(2) for j in range(2) for k in range(2)]


def _cells_around(corners: torch.Tensor, side: int) -> torch.Tensor:
    """The cells (by their lowest corner's flat index) that have any of the flat `corners` of (B, S, S, S) grids as
    a corner, each once."""
    within, ijk = _grid_index(corners, side)
    offsets = torch.tensor(_OFFSETS, device=corners.device)
    low = ijk[:, None, :] - offsets  # (P, 8, 3)
    valid = ((low >= 0) & (low < side - 1)).all(-1)
    flat = (corners[:, None] - within[:, None]) + (low[..., 0] * side + low[..., 1]) * side + low[..., 2]
    return flat[valid].unique()


def _grid_index(linear: torch.Tensor, side: int) -> tuple:
    """Flat indices into (B, S, S, S) grids -> (the index within its shape's grid, (P, 3) i, j, k)."""
    within = linear % side ** 3
    return within, torch.stack([within // (side * side), (within // side) % side, within % side], dim=-1)


def _corners_of(cells: torch.Tensor, side: int) -> torch.Tensor:
    """(M, 8) flat corner indices of cells given by their lowest corner's flat index."""
    offsets = torch.tensor([(i * side + j) * side + k for i, j, k in _OFFSETS], device=cells.device)
    return cells[:, None] + offsets


def any_corner(corners: torch.Tensor) -> torch.Tensor:
    """(B, N, N, N) bool: cells of (B, N+1, N+1, N+1) bool corner grids with at least one corner set."""
    out = corners[:, 1:] | corners[:, :-1]
    out = out[:, :, 1:] | out[:, :, :-1]
    return out[:, :, :, 1:] | out[:, :, :, :-1]


def _all_corners(corners: torch.Tensor) -> torch.Tensor:
    return ~any_corner(~corners)


def _corner_mask(cells: torch.Tensor) -> torch.Tensor:
    """(B, N+1, N+1, N+1) bool: the corners of the (B, N, N, N) `cells`."""
    b, n = cells.shape[0], cells.shape[1]
    mask = torch.zeros((b, n + 1, n + 1, n + 1), dtype=torch.bool, device=cells.device)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                mask[:, i:i + n, j:j + n, k:k + n] |= cells
    return mask


def _straddling(values: torch.Tensor, exact: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, N/2, N/2, N/2) bool: halved cells (3^3 corners each) whose exact corners hold values on both sides of
    the threshold."""
    blocks = lambda grid: grid.unfold(1, 3, 2).unfold(2, 3, 2).unfold(3, 3, 2).flatten(4)  # noqa: E731
    above = blocks(exact & (values > threshold)).any(-1)
    below = blocks(exact & (values <= threshold)).any(-1)
    return above & below


def _cells_near(values: torch.Tensor, threshold: float, band: float) -> torch.Tensor:
    """(B, N, N, N) bool: cells of (B, N+1, N+1, N+1) corner grids whose corners straddle threshold or come within
    band."""
    b, n = values.shape[0], values.shape[1] - 1
    corners = values.unfold(1, 2, 1).unfold(2, 2, 1).unfold(3, 2, 1).reshape(b, n, n, n, 8)
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
