"""IM-NET's point sampling: O(n^2) labelled points per resolution instead of O(n^3), concentrated near the surface.

At resolution r the cube is split into r^3 cells; a cell is occupied when any fine voxel inside it is (IM-NET's max
pooling: thin parts such as chair legs survive at 16^3, where a majority rule would erase them). A cell is an
"edge" cell when the window x window x window cube of cells centred on it holds both values. Stage 1 takes every
edge cell in walk order and fills up to the count with random other cells; if the edge cells alone exceed the count,
stage 2 does the same over even-indexed cells only; if that overflows too, stage 3 takes random cells. Each chosen
cell contributes one point: a random fine voxel inside the cell that carries the cell's value, so labels are exact
at the fine resolution too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from recon3d.geometry.voxelize import pool

_CANDIDATES = 64  # fine voxels tried per cell when looking for one with the cell's value


@dataclass
class PointSet:
    """Points of one resolution: indices on the fine grid and their occupancy."""

    indices: np.ndarray  # (P, 3) uint8/uint16 fine-grid voxel indices; position = (index + 0.5) / F - 0.5
    values: np.ndarray  # (P,) bool
    stage: int  # 1, 2 or 3: which stage of the method produced the set


def edge_cells(cells: np.ndarray, window: int = 7) -> np.ndarray:
    """(r, r, r) bool: cells whose window^3 neighbourhood (clipped at the border) holds both values."""
    as_int = cells.view(np.uint8)
    return ndimage.maximum_filter(as_int, size=window, mode="nearest") != ndimage.minimum_filter(
        as_int, size=window, mode="nearest")


def choose_cells(edge: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Flat indices of `count` distinct cells following the three stages, and the stage used.

    Raises:
        ValueError: count exceeds the number of cells.
    """
    total = edge.size
    if not 0 < count <= total:
        raise ValueError(f"cannot choose {count} cells out of {total}")
    r = edge.shape[0]
    flat_edge = np.flatnonzero(edge)  # C order: the method's walk order
    if len(flat_edge) <= count:
        chosen, stage = flat_edge, 1
    else:
        ijk = np.stack(np.unravel_index(flat_edge, edge.shape), axis=1)
        even = flat_edge[(ijk % 2 == 0).all(axis=1)]
        chosen, stage = (even, 2) if len(even) <= count and r > 1 else (np.empty(0, np.int64), 3)
    missing = count - len(chosen)
    if missing:
        pool_ = np.setdiff1d(np.arange(total), chosen, assume_unique=True)
        chosen = np.concatenate([chosen, rng.choice(pool_, size=missing, replace=False)])
    return chosen.astype(np.int64), stage


def sample_points(fine: np.ndarray, resolution: int, count: int, rng: np.random.Generator,
                  window: int = 7, cells: np.ndarray | None = None) -> PointSet:
    """Sample `count` labelled points at `resolution` from a fine solid (F, F, F) bool.

    Args:
        fine: cubic boolean solid; F must be a multiple of resolution.
        resolution: r, the cell grid; count: points, at most r^3; window: the edge test's cube (odd).
        rng: seeds the fill-up and the position inside each cell (same rng state -> same points).
        cells: the (r, r, r) labels; default the fine solid max pooled (IM-NET). A point lies in a fine voxel of its
            cell's value where the cell has one.

    Raises:
        ValueError: a non-cubic grid, F not a multiple of r, or count out of range.
    """
    size = fine.shape[0]
    if fine.shape != (size, size, size) or size % resolution:
        raise ValueError(f"fine grid {fine.shape} must be cubic with a side that is a multiple of {resolution}")
    block = size // resolution
    cells = pool(fine, block, "any") if cells is None else cells
    if cells.shape != (resolution,) * 3:
        raise ValueError(f"cells {cells.shape} are not the {resolution}^3 grid")
    chosen, stage = choose_cells(edge_cells(cells, window), count, rng)
    cell_ijk = np.stack(np.unravel_index(chosen, cells.shape), axis=1)
    values = cells.ravel()[chosen]
    tries = min(block ** 3, _CANDIDATES)
    if block ** 3 <= _CANDIDATES:
        offsets = np.stack(np.unravel_index(np.arange(block ** 3), (block,) * 3), axis=1)
        offsets = np.broadcast_to(offsets, (len(chosen), tries, 3))
        keys = rng.random((len(chosen), tries))
    else:
        offsets = rng.integers(0, block, size=(len(chosen), tries, 3))
        keys = rng.random((len(chosen), tries))
    candidates = cell_ijk[:, None, :] * block + offsets
    cand_values = fine[candidates[..., 0], candidates[..., 1], candidates[..., 2]]
    keys = np.where(cand_values == values[:, None], keys, -1.0)
    pick = keys.argmax(axis=1)
    points = candidates[np.arange(len(chosen)), pick]
    missed = np.flatnonzero(keys[np.arange(len(chosen)), pick] < 0)
    if len(missed):  # no matching voxel among the draws (a cell with few filled voxels): search its whole block
        every = np.stack(np.unravel_index(np.arange(block ** 3), (block,) * 3), axis=1)
        for start in range(0, len(missed), 256):  # bounded memory: 256 cells x block^3 at a time
            part = missed[start:start + 256]
            full = cell_ijk[part][:, None, :] * block + every[None]
            match = fine[full[..., 0], full[..., 1], full[..., 2]] == values[part, None]
            score = np.where(match, rng.random(match.shape), -1.0)
            points[part] = full[np.arange(len(part)), score.argmax(axis=1)]
    dtype = np.uint8 if size <= 256 else np.uint16
    return PointSet(indices=points.astype(dtype), values=values.astype(bool), stage=stage)


def point_positions(indices: np.ndarray, grid: int) -> np.ndarray:
    """(P, 3) float32 positions in [-0.5, 0.5]^3 of fine-grid voxel indices (IM-NET: (i + 0.5) / 256 - 0.5)."""
    return ((indices.astype(np.float32) + 0.5) / grid - 0.5).astype(np.float32)
