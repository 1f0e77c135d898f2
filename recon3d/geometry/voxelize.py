"""Solid voxels in the field's convention, and the older flood-fill rule by name.

Three rules (`geometry.voxel_rule`):
- "binvox" reproduces binvox's z-buffer carving, the rule behind ShapeNet's own `*.solid.binvox`: the
  mesh is rasterised along each of the three axes through the voxel centres; a voxel is on the surface when a
  triangle crosses one of its three centre lines, and inside when it lies between the first and the last surface hit
  of its column along every axis. A sheet keeps at least one voxel per column (it is a digital plane without 6-tunnels),
  a hole in the mesh opens only the columns that pass through it (no leak into the whole interior), and cavities that
  no axis can see into are filled, as binvox fills them. Coarser grids are max-pooled from the fine one (IM-NET's
  rule, which the point samples follow too), so thin parts survive at every stored resolution; walls come out up to
  a voxel thicker on each side than binvox's own at the stored size.
- "shapenet" (the default) is the same carving done on the stored grid itself, so walls are as thick as binvox
  makes them at that size (ShapeNet's solid.binvox); parts thinner than a voxel that its centre lines miss come from
  the fine solid, max pooled. Its point samples are labelled by the same rule at their own size
  (data/writing/prepare.py).
- "fill" marks every voxel the surface touches, flood-fills the outside from the border (6-connected), calls the
  rest solid and pools with "more than half". It is exact for closed meshes but thins sheets, drops parts thinner than
  half a stored voxel, and leaks through holes; leaks are repaired where they happened: on the stored grid we close
  the surface (dilate by `seal` voxels, fill, erode back) and keep only the regions that closing added which reach
  deeper than `seal` voxels from any surface voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage

_STACK = 96  # subdivision depth bound: each split halves the longest edge
RULES = ("binvox", "shapenet", "fill")


@numba.njit(cache=True, nogil=True)
def _mark_surface(tri, origin, inv_h, limit, grid):  # pragma: no cover - compiled
    """Split every triangle at its longest edge until edges are shorter than `limit` voxels; mark the vertices."""
    n = grid.shape[0]
    stack = np.empty((_STACK, 3, 3))
    for f in range(tri.shape[0]):
        for i in range(3):
            for j in range(3):
                stack[0, i, j] = (tri[f, i, j] - origin[j]) * inv_h
        top = 1
        while top > 0:
            top -= 1
            t = stack[top].copy()
            e0 = (t[1, 0] - t[0, 0]) ** 2 + (t[1, 1] - t[0, 1]) ** 2 + (t[1, 2] - t[0, 2]) ** 2
            e1 = (t[2, 0] - t[1, 0]) ** 2 + (t[2, 1] - t[1, 1]) ** 2 + (t[2, 2] - t[1, 2]) ** 2
            e2 = (t[0, 0] - t[2, 0]) ** 2 + (t[0, 1] - t[2, 1]) ** 2 + (t[0, 2] - t[2, 2]) ** 2
            longest = max(e0, e1, e2)
            if longest > limit * limit and top + 2 < _STACK:
                if e0 == longest:
                    a, b, c = 0, 1, 2
                elif e1 == longest:
                    a, b, c = 1, 2, 0
                else:
                    a, b, c = 2, 0, 1
                for j in range(3):
                    mid = 0.5 * (t[a, j] + t[b, j])
                    stack[top, 0, j] = t[a, j]
                    stack[top, 1, j] = mid
                    stack[top, 2, j] = t[c, j]
                    stack[top + 1, 0, j] = mid
                    stack[top + 1, 1, j] = t[b, j]
                    stack[top + 1, 2, j] = t[c, j]
                top += 2
                continue
            for i in range(4):
                if i < 3:
                    x, y, z = t[i, 0], t[i, 1], t[i, 2]
                else:
                    x = (t[0, 0] + t[1, 0] + t[2, 0]) / 3.0
                    y = (t[0, 1] + t[1, 1] + t[2, 1]) / 3.0
                    z = (t[0, 2] + t[1, 2] + t[2, 2]) / 3.0
                ix, iy, iz = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
                if 0 <= ix < n and 0 <= iy < grid.shape[1] and 0 <= iz < grid.shape[2]:
                    grid[ix, iy, iz] = True


def _check_input(vertices: np.ndarray, faces: np.ndarray, voxel_size: float) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"expected vertices (N, 3) and faces (M, 3), got {vertices.shape} and {faces.shape}")
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")


def surface_voxels(vertices: np.ndarray, faces: np.ndarray, origin, voxel_size: float, dims) -> np.ndarray:
    """Boolean grid (dims) of the voxels that the triangles pass through; index [i, j, k] is x, y, z.

    Voxel [i, j, k] covers origin + voxel_size * ([i, i+1) x [j, j+1) x [k, k+1)).

    Raises:
        ValueError: wrong array shapes or a non-positive voxel size.
    """
    _check_input(vertices, faces, voxel_size)
    grid = np.zeros(tuple(int(d) for d in dims), dtype=np.bool_)
    tri = np.ascontiguousarray(vertices[faces], dtype=np.float64)
    _mark_surface(tri, np.asarray(origin, dtype=np.float64), 1.0 / voxel_size, 0.5, grid)
    return grid


@numba.njit(cache=True, nogil=True)
def _rasterise(tri, origin, inv_h, surface, first, last):  # pragma: no cover - compiled
    """Rasterise triangles along each axis through the voxel-centre lines; mark hits, keep each column's extremes."""
    n = surface.shape[0]
    t = np.empty((3, 3))
    for f in range(tri.shape[0]):
        for i in range(3):
            for j in range(3):
                t[i, j] = (tri[f, i, j] - origin[j]) * inv_h
        for a in range(3):
            u, v = (1, 2) if a == 0 else ((0, 2) if a == 1 else (0, 1))
            area = (t[1, u] - t[0, u]) * (t[2, v] - t[0, v]) - (t[2, u] - t[0, u]) * (t[1, v] - t[0, v])
            if abs(area) < 1e-12:
                continue  # edge-on along this axis: the other two axes see it
            lo_u = max(0, int(np.ceil(min(t[0, u], t[1, u], t[2, u]) - 0.5)))
            hi_u = min(n - 1, int(np.floor(max(t[0, u], t[1, u], t[2, u]) - 0.5)))
            lo_v = max(0, int(np.ceil(min(t[0, v], t[1, v], t[2, v]) - 0.5)))
            hi_v = min(n - 1, int(np.floor(max(t[0, v], t[1, v], t[2, v]) - 0.5)))
            for iu in range(lo_u, hi_u + 1):
                pu = iu + 0.5
                for iv in range(lo_v, hi_v + 1):
                    pv = iv + 0.5
                    w0 = (t[1, u] - pu) * (t[2, v] - pv) - (t[2, u] - pu) * (t[1, v] - pv)
                    w1 = (t[2, u] - pu) * (t[0, v] - pv) - (t[0, u] - pu) * (t[2, v] - pv)
                    w2 = area - w0 - w1
                    if area > 0 and (w0 < 0 or w1 < 0 or w2 < 0):
                        continue
                    if area < 0 and (w0 > 0 or w1 > 0 or w2 > 0):
                        continue
                    depth = (w0 * t[0, a] + w1 * t[1, a] + w2 * t[2, a]) / area
                    k = min(n - 1, max(0, int(np.floor(depth))))
                    if a == 0:
                        surface[k, iu, iv] = True
                    elif a == 1:
                        surface[iu, k, iv] = True
                    else:
                        surface[iu, iv, k] = True
                    first[a, iu, iv] = min(first[a, iu, iv], k)
                    last[a, iu, iv] = max(last[a, iu, iv], k)


def carved_solid(vertices: np.ndarray, faces: np.ndarray, origin, voxel_size: float, size: int) -> np.ndarray:
    """binvox's solid on a cubic grid of `size`: surface voxels plus every voxel inside its columns along all 3 axes
    (the grid as in surface_voxels; the same errors)."""
    _check_input(vertices, faces, voxel_size)
    surface = np.zeros((size,) * 3, dtype=np.bool_)
    first = np.full((3, size, size), size, dtype=np.int32)
    last = np.full((3, size, size), -1, dtype=np.int32)
    tri = np.ascontiguousarray(vertices[faces], dtype=np.float64)
    _rasterise(tri, np.asarray(origin, dtype=np.float64), 1.0 / voxel_size, surface, first, last)
    index = np.arange(size, dtype=np.int32)
    inside = (index[:, None, None] >= first[0][None]) & (index[:, None, None] <= last[0][None])
    inside &= (index[None, :, None] >= first[1][:, None]) & (index[None, :, None] <= last[1][:, None])
    inside &= (index[None, None, :] >= first[2][:, :, None]) & (index[None, None, :] <= last[2][:, :, None])
    return inside | surface


def shapenet_solid(vertices: np.ndarray, faces: np.ndarray, origin, voxel_size: float, size: int,
                 factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The shapenet rule: binvox's solid carved on the grid itself (its wall thickness), plus the thin parts it
    missed (thin_parts_kept); and the solid on the `factor` times finer grid.

    Returns (solid at size, solid at size * factor); the grids and errors as in carved_solid.
    """
    fine = carved_solid(vertices, faces, origin, voxel_size / factor, size * factor)
    return thin_parts_kept(vertices, faces, origin, voxel_size, size, fine), fine


def thin_parts_kept(vertices: np.ndarray, faces: np.ndarray, origin, voxel_size: float, size: int,
                    fine: np.ndarray) -> np.ndarray:
    """The solid carved on the cubic grid (origin, voxel_size, size) whose refinement `fine` is (a multiple of size
    per side, the same origin), plus the parts that carving missed.

    Carving there marks a voxel only where a triangle crosses one of its centre lines, as binvox does, so walls are as
    thick as ShapeNet's (max pooling the fine solid instead adds up to a voxel to each side of a wall). A part thinner
    than a voxel that no centre line crosses vanishes there; the fine solid, max pooled, still holds it, and every
    pooled voxel farther than one voxel from the carved solid is such a part and is kept.
    """
    factor = fine.shape[0] // size
    if factor == 1:
        return fine.copy()
    carved = carved_solid(vertices, faces, origin, voxel_size, size)
    return carved | (pool(fine, factor, "any") & ~_dilate(carved, 1))


def fill_outside(surface: np.ndarray) -> np.ndarray:
    """Solid = everything not 6-connected to the grid border through empty voxels."""
    empty = ~surface
    labels, count = ndimage.label(empty)
    border = np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel(),
                             labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])
    inside = np.ones(count + 1, dtype=bool)  # lookup table by label: far faster than np.isin on 16M voxels
    inside[border] = False
    inside[0] = True  # label 0 is the surface itself
    return inside[labels]


def pool(grid: np.ndarray, factor: int, rule: str = "half") -> np.ndarray:
    """Downsample a cubic boolean grid by `factor`: "half" = more than half filled, "any" = at least one."""
    if factor == 1:
        return grid.copy()
    r = grid.shape[0] // factor
    counts = grid.view(np.uint8).reshape(r, factor, r, factor, r, factor).sum(axis=(1, 3, 5), dtype=np.int32)
    return counts > 0 if rule == "any" else counts * 2 > factor ** 3


def _dilate(grid: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by a (2r+1)^3 cube: three separable running maxima, linear in the grid size."""
    out = grid.view(np.uint8)
    for axis in range(3):
        out = ndimage.maximum_filter1d(out, 2 * radius + 1, axis=axis, mode="constant", cval=0)
    return out.astype(bool)


def _erode(grid: np.ndarray, radius: int) -> np.ndarray:
    """Erosion by a (2r+1)^3 cube; outside the grid counts as empty."""
    out = grid.view(np.uint8)
    for axis in range(3):
        out = ndimage.minimum_filter1d(out, 2 * radius + 1, axis=axis, mode="constant", cval=0)
    return out.astype(bool)


def leaked_cavities(surface: np.ndarray, filled: np.ndarray, seal: int) -> np.ndarray:
    """Voxels inside the surface that the fill missed because of holes narrower than about 2 * `seal` voxels.

    Closing (dilate, fill, erode) bridges holes and also narrow gaps between parts; only the added regions that
    reach further than `seal` voxels from the surface are cavities, the rest were gaps and are dropped.
    """
    if seal <= 0:
        return np.zeros_like(surface)
    thick = _dilate(surface, seal)
    added = _erode(fill_outside(thick), seal) & ~filled
    if not added.any():
        return added
    deep = added & ~thick
    labels, count = ndimage.label(added)
    keep = np.zeros(count + 1, dtype=bool)
    keep[labels[deep]] = True
    keep[0] = False
    return keep[labels]


@dataclass
class Solid:
    """Solid occupancy of one shape on the stored and the fine grid of the cube [-0.5, 0.5]^3."""

    coarse: np.ndarray  # (R, R, R) bool, R = voxel_resolution
    fine: np.ndarray  # (F, F, F) bool, F = fine_resolution
    sealed_voxels: int  # stored-grid voxels added by leak repair (0 for a watertight mesh)


def solid_voxels(vertices: np.ndarray, faces: np.ndarray, resolution: int = 64, fine_resolution: int = 256,
                 seal: int = 2, rule: str = "shapenet") -> Solid:
    """Voxelise a normalised mesh (inside [-0.5, 0.5]^3) into a solid on the fine and the stored grid.

    Args:
        vertices: (N, 3) float in the unit cube; faces: (M, 3) int.
        resolution: stored grid R; fine_resolution: F, a multiple of R, where the solid is computed.
        seal: leak-repair dilation in stored voxels for the "fill" rule (0 disables); "binvox" needs none.
        rule: "binvox" (carving, max pooling), "shapenet" (carving on both grids, thin parts from the fine one) or
            "fill" (flood fill, leak seal, "more than half" pooling).

    Raises:
        ValueError: bad shapes, F not a multiple of R, or an unknown rule.
    """
    if fine_resolution % resolution:
        raise ValueError(f"fine_resolution {fine_resolution} is not a multiple of resolution {resolution}")
    if rule not in RULES:
        raise ValueError(f"unknown voxel rule {rule!r}: expected one of {RULES}")
    factor = fine_resolution // resolution
    if rule == "binvox":
        fine = carved_solid(vertices, faces, (-0.5, -0.5, -0.5), 1.0 / fine_resolution, fine_resolution)
        return Solid(coarse=pool(fine, factor, "any"), fine=fine, sealed_voxels=0)
    if rule == "shapenet":
        coarse, fine = shapenet_solid(vertices, faces, (-0.5, -0.5, -0.5), 1.0 / resolution, resolution, factor)
        return Solid(coarse=coarse, fine=fine, sealed_voxels=0)
    surface = surface_voxels(vertices, faces, (-0.5, -0.5, -0.5), 1.0 / fine_resolution, (fine_resolution,) * 3)
    fine = fill_outside(surface)
    # A cheap check on the stored grid first; the closing runs on the fine grid only for meshes that leaked.
    sealed = 0
    if seal > 0 and leaked_cavities(pool(surface, factor, "any"), pool(fine, factor, "any"), seal).any():
        before = pool(fine, factor, "half")
        fine |= leaked_cavities(surface, fine, (seal + 1) * factor)  # the pooled surface is up to a voxel thicker
        sealed = int((pool(fine, factor, "half") & ~before).sum())
    return Solid(coarse=pool(fine, factor, "half"), fine=fine, sealed_voxels=sealed)


def surface_coverage(points: np.ndarray, solid: np.ndarray) -> float:
    """Share of surface points (in [-0.5, 0.5]^3) lying within one voxel (26-neighbourhood) of a cubic solid grid:
    1.0 when the solid keeps every part of the surface, low when parts vanished (sheets thinner than the rule keeps).
    """
    if len(points) == 0:
        return 1.0
    size = solid.shape[0]
    near = _dilate(solid, 1)
    index = np.clip(np.floor((np.asarray(points, dtype=np.float64) + 0.5) * size).astype(np.int64), 0, size - 1)
    return float(near[index[:, 0], index[:, 1], index[:, 2]].mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean grids of the same shape (1.0 when both are empty)."""
    if a.shape != b.shape:
        raise ValueError(f"grids differ in shape: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
