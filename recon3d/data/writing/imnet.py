"""IM-NET's prepared hdf5 files: which grid their point sets use, and one row as sample members.

Two layouts are in circulation, and nothing in a file says which it is:

    resolution  the implicit-decoder release (the paper's code): points_<r> are cell indices of the r^3 grid itself,
                0..r-1 (all 4,096 cells at 16, 8,192 points at 32, 32,768 at 64)
    256         IM-NET-pytorch: every set holds coordinates of a 256^3 grid, 0..255, one point inside each sampled
                cell of the r^3 grid

In both, values_<r> is the occupancy of the r^3 cell that holds the point: the 64^3 `voxels` max-pooled to r^3.
So a layout is told by the largest index of each set (a 256-grid set at r spreads far beyond r-1), and either one is
checked by comparing the values with the pooled voxels at a sample of points. A file whose points contradict the
stated layout, or whose values disagree with its voxels, stops the build naming the file and the row.
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

import h5py
import numpy as np

from recon3d.data import schema
from recon3d.data.writing.formats import RejectError

LAYOUTS = ("auto", "resolution", "256")  # source.hdf5_point_grid
GRID_256 = schema.IMNET_POINT_GRID
MAX_MISMATCH = 0.05  # values that may disagree with the pooled voxels (both releases agree exactly)
CHECK_POINTS = 2048  # points per set compared with the voxels, per row
SCAN_ROWS = 4  # rows per file that discovery reads to tell (and check) the layout


def point_sets(h5: h5py.File) -> List[int]:
    """The resolutions r of a file's points_<r> datasets, ascending."""
    return sorted(int(m.group(1)) for m in (re.fullmatch(r"points_(\d+)", k) for k in h5.keys()) if m)


def grid_of(layout: str, resolution: int) -> int:
    """The grid a set's indices refer to."""
    return resolution if layout == "resolution" else GRID_256


def _pooled(voxels: np.ndarray, resolution: int) -> np.ndarray | None:
    """The voxels max-pooled to resolution^3, or None when the grids do not nest."""
    size = voxels.shape[0]
    if resolution > size or size % resolution:
        return None
    f = size // resolution
    return voxels.reshape(resolution, f, resolution, f, resolution, f).max(axis=(1, 3, 5))


def mismatch(voxels: np.ndarray, points: np.ndarray, values: np.ndarray, resolution: int, grid: int,
             rng: np.random.Generator) -> Tuple[float, int]:
    """Fraction of (at most CHECK_POINTS) points whose value differs from the pooled voxels, and how many were
    compared (0 when the voxel grid does not nest with resolution^3). All arrays in the file's own axis order."""
    pooled = _pooled(voxels, resolution)
    if pooled is None or not len(points):
        return 0.0, 0
    pick = rng.choice(len(points), min(CHECK_POINTS, len(points)), replace=False)
    cells = points[pick].astype(np.int64) * resolution // grid
    expected = pooled[cells[:, 0], cells[:, 1], cells[:, 2]]
    return float(np.mean(expected != values[pick])), len(pick)


def _read_row(h5: h5py.File, row: int) -> Tuple[np.ndarray, Dict[int, Tuple[np.ndarray, np.ndarray]]]:
    voxels = np.asarray(h5["voxels"][row]).reshape(h5["voxels"].shape[1:4]) > 0
    sets = {res: (np.asarray(h5[f"points_{res}"][row]).reshape(-1, 3),
                  np.asarray(h5[f"values_{res}"][row]).reshape(-1) > 0.5) for res in point_sets(h5)}
    return voxels, sets


def check_row(voxels: np.ndarray, sets: Dict[int, Tuple[np.ndarray, np.ndarray]], layout: str, row: int) -> None:
    """Raise RejectError when a set's indices leave its grid or its values disagree with the voxels."""
    rng = np.random.default_rng(row)
    for res, (points, values) in sets.items():
        grid = grid_of(layout, res)
        top = int(points.max(initial=0))
        if top >= grid:
            raise RejectError(f"row {row}: points_{res} holds index {top}, outside the {grid}^3 grid of the "
                              f"{layout!r} layout")
        if len(points) != len(values):
            raise RejectError(f"row {row}: points_{res} has {len(points)} points but values_{res} {len(values)}")
        wrong, compared = mismatch(voxels, points, values, res, grid, rng)
        if wrong > MAX_MISMATCH:
            raise RejectError(f"row {row}: values_{res} disagree with the voxels (max-pooled to {res}^3) at "
                              f"{wrong:.0%} of {compared} points; the points are not on the {grid}^3 grid of the "
                              f"{layout!r} layout, or the row is damaged")


def file_layout(h5: h5py.File, name: str, configured: str) -> str:
    """The layout of one file ('resolution' or '256'), told from (and checked on) a few rows spread over it.

    Raises:
        ValueError: naming the file (and row) when its sets disagree on a grid, contradict `configured`, or their
            values disagree with the voxels.
    """
    if not point_sets(h5) or any(f"values_{res}" not in h5 for res in point_sets(h5)):
        return "256" if configured == "auto" else configured  # its rows are rejected one by one, naming the gap
    rows = int(h5["voxels"].shape[0])
    picks = sorted({int(r) for r in np.linspace(0, rows - 1, min(rows, SCAN_ROWS))}) if rows else []
    tops = {res: max((int(np.asarray(h5[f"points_{res}"][r]).max(initial=0)) for r in picks), default=0)
            for res in point_sets(h5)}
    found = {res: "resolution" if top < res else "256" for res, top in tops.items()}
    if len(set(found.values())) > 1:
        detail = ", ".join(f"points_{r} reaches {tops[r]}" for r in sorted(tops))
        raise ValueError(f"{name}: its point sets are on different grids ({detail}); cannot read it")
    layout = next(iter(found.values()), "256")
    if configured not in ("auto", layout):
        res = min(found)
        if configured == "resolution":
            raise ValueError(f"{name}: source.hdf5_point_grid=resolution, but points_{res} holds index {tops[res]} "
                             f"(above {res - 1}): coordinates of IM-NET-pytorch's 256^3 grid (set it to 256 or auto)")
        raise ValueError(f"{name}: source.hdf5_point_grid=256, but every index of points_{res} lies within "
                         f"0..{res - 1}: the implicit-decoder layout, cell indices of each set's own grid (set it "
                         f"to resolution or auto)")
    for row in picks:
        try:
            check_row(*_read_row(h5, row), layout, row)
        except RejectError as err:
            raise ValueError(f"{name}: {err}") from None
    return layout


def row_members(h5: h5py.File, row: int, axes: str, layout: str) -> Tuple[Dict[str, bytes], dict]:
    """One row as sample members (voxels, points and values per set, views when the file has pixels) and its
    meta.json fields. Points keep their grid's indices; meta's point_grids names each set's grid.

    Raises:
        RejectError: the row's points leave their grid or its values disagree with its voxels.
    """
    order = ["xyz".index(axis) for axis in axes]
    missing = [name for name in ["voxels"] + [f"values_{res}" for res in point_sets(h5)] if name not in h5]
    if missing:
        raise RejectError(f"hdf5 is missing dataset {missing[0]!r}")
    voxels, sets = _read_row(h5, row)
    if not sets:
        raise RejectError("hdf5 has no points_<r> datasets")
    check_row(voxels, sets, layout, row)
    members, counts = {schema.VOXELS: schema.pack_voxels(voxels.transpose(order))}, {}
    for res, (points, values) in sets.items():
        members[schema.points_member(res)] = schema.npy_bytes(points[:, order].astype(np.uint8))
        members[schema.values_member(res)] = schema.pack_values(values)
        counts[str(res)] = {"points": int(len(points)), "stage": 0}
    pixels = np.asarray(h5["pixels"][row]) if "pixels" in h5 else np.zeros((0, 1, 1), np.uint8)
    if len(pixels):
        members[schema.VIEWS] = schema.pack_views([image.astype(np.uint8) for image in pixels])
    grids = {str(res): grid_of(layout, res) for res in sets}
    meta = {"voxel_resolution": int(voxels.shape[0]), "point_grids": grids, "point_sets": counts,
            "views": int(len(pixels)), "cameras": False}
    if layout == "256":
        meta["point_grid"] = GRID_256
    return members, meta
