"""Marching cubes in torch, on the device that holds the grid, over the cells the surface crosses only.

The vertices are scikit-image's: one per crossed edge, placed by linear interpolation. The triangles come from a case
table derived here rather than typed in: for each of the 256 inside/outside patterns of a cell's corners, every face
of the cell contributes one segment per run of inside corners around it (on a face whose corners alternate, the two
inside corners are cut off apart: both cells that share the face decide alike, so the surface has no holes), the
segments chain into closed loops across the faces, and each loop is fanned into triangles from a corner whose
diagonals cross the cell's inside rather than lie on one of its faces. Only the ambiguous faces
can differ from scikit-image's own tables (Lorensen's or Lewiner's); tests/geometry/test_marching.py compares the two
meshes (vertex and face counts, Hausdorff distance) on every grid it uses.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple

import numpy as np
import torch

from recon3d.geometry.extract import any_corner

CORNERS = [(c & 1, (c >> 1) & 1, (c >> 2) & 1) for c in range(8)]  # corner c's offset along (i, j, k)
EDGES = [(c, c | (1 << axis)) for axis in range(3) for c in range(8) if not c & (1 << axis)]  # edge e along e // 4


def _face_rings() -> List[List[int]]:
    """The 6 faces' corners in cyclic order, counter-clockwise seen from outside the cell."""
    rings = []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        for side in (0, 1):
            ring = [(side << axis) | (bu << u) | (bv << v) for bu, bv in ((0, 0), (1, 0), (1, 1), (0, 1))]
            # (u, v) counter-clockwise is seen from +axis for axes 0 and 2 (u x v = +axis) and from -axis for 1
            seen_from_plus = axis != 1
            rings.append(ring if seen_from_plus == bool(side) else ring[::-1])
    return rings


def case_loops(case: int) -> List[List[int]]:
    """The closed loops of crossed edges of a cell whose corners c with bit c of `case` set are inside.

    Around each face (counter-clockwise from outside), a run of inside corners is entered by one crossed edge and
    left by another: the face's segment goes from the first to the second. Each crossed edge is left on one of its
    two faces and entered on the other, so the segments chain into loops.
    """
    edge_of = {frozenset(pair): e for e, pair in enumerate(EDGES)}
    inside = [(case >> c) & 1 for c in range(8)]
    following = {}
    for ring in _face_rings():
        for i in range(4):
            before, here = ring[i - 1], ring[i]
            if inside[here] and not inside[before]:  # a run starts at `here`: find where it ends
                j = i
                while inside[ring[(j + 1) % 4]]:
                    j += 1
                end, out = ring[j % 4], ring[(j + 1) % 4]
                following[edge_of[frozenset((before, here))]] = edge_of[frozenset((end, out))]
    loops = []
    while following:
        start = min(following)
        loop = [start]
        while following[loop[-1]] != start:
            loop.append(following.pop(loop[-1]))
        following.pop(loop[-1])
        loops.append(loop)
    return loops


def _fan_start(loop: List[int]) -> List[int]:
    """The loop rotated to start where no diagonal of its fan joins two edges of one face of the cell: such a
    diagonal could be the one the cell across that face draws too (or its segment), and an edge of three or four
    triangles is not a surface. Every loop of the 256 cases has such a start (a test checks)."""
    def one_face(a: int, b: int) -> bool:
        corners = set(EDGES[a]) | set(EDGES[b])
        return any(len({(c >> axis) & 1 for c in corners}) == 1 for axis in range(3))

    n = len(loop)
    start = next(s for s in range(n) if not any(one_face(loop[s], loop[(s + k) % n]) for k in range(2, n - 1)))
    return loop[start:] + loop[:start]


@lru_cache(maxsize=None)
def triangle_table() -> torch.Tensor:
    """(256, 3 T) int64: each case's triangles as crossed-edge triples (fans of its loops), -1 after the last."""
    rows = []
    for case in range(256):
        row = []
        for loop in case_loops(case):
            loop = _fan_start(loop)
            for k in range(1, len(loop) - 1):
                row += [loop[0], loop[k + 1], loop[k]]  # wound so that normals point out of the inside
        rows.append(row)
    width = max(len(row) for row in rows)
    return torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.long)


def marching_cubes(values: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The threshold surface of a (X, Y, Z) grid of corner values (inside: above the threshold): vertices (V, 3)
    float32 in index units, faces (F, 3) int64, on the grid's device. Cells outside the grid count as outside
    (the grid is padded), so that shapes touching its border close."""
    values = values.float()
    outside = min(float(values.min()), threshold - 1.0)  # the padding's value
    inside = torch.zeros([n + 2 for n in values.shape], dtype=torch.bool, device=values.device)  # padded: 1 byte
    inside[1:-1, 1:-1, 1:-1] = values > threshold  # per corner, where a padded float copy would take 4 and a fill
    crossed = (any_corner(inside[None]) & any_corner(~inside[None]))[0]
    cells = crossed.nonzero()  # (M, 3)
    device = values.device
    corners = cells[:, None, :] + torch.tensor(CORNERS, device=device)  # (M, 8, 3)
    flags = inside[corners[..., 0], corners[..., 1], corners[..., 2]].long()
    case = (flags << torch.arange(8, device=device)).sum(1)
    table = triangle_table().to(device)[case]  # (M, 3 T)
    used = table >= 0
    edge = table[used]  # the crossed edges of all triangles, three per triangle, cell by cell
    low = cells[:, None, :].expand(-1, table.shape[1], -1)[used] + \
        torch.tensor([CORNERS[a] for a, _ in EDGES], device=device)[edge]
    sizes = torch.tensor(inside.shape, device=device)
    key = ((edge // 4 * sizes[0] + low[:, 0]) * sizes[1] + low[:, 1]) * sizes[2] + low[:, 2]
    unique, index = torch.unique(key, return_inverse=True)
    axis = unique // (sizes[0] * sizes[1] * sizes[2])
    start = torch.stack([unique // (sizes[1] * sizes[2]) % sizes[0], unique // sizes[2] % sizes[1],
                         unique % sizes[2]], dim=-1)
    step = torch.eye(3, dtype=torch.long, device=device)[axis]
    v0, v1 = _padded_values(values, start, outside), _padded_values(values, start + step, outside)
    t = (threshold - v0) / (v1 - v0)
    verts = start.float() + t[:, None] * step.float() - 1.0  # the padding's cell taken off
    return verts, index.reshape(-1, 3)


def corner_grid_mesh(values: torch.Tensor, threshold: float = 0.5) -> Tuple[np.ndarray, np.ndarray]:
    """The threshold surface of an (N+1)^3 grid of values at the corners -0.5 + i / N (coarse-to-fine's grid) as
    numpy vertices (V, 3) float32 in [-0.5, 0.5] and faces (F, 3) int64: grid_to_mesh's convention, computed on the
    grid's device."""
    verts, faces = marching_cubes(values, threshold)
    scale = torch.tensor(values.shape, device=values.device, dtype=torch.float32) - 1
    return (verts / scale - 0.5).cpu().numpy(), faces.cpu().numpy()


def _padded_values(values: torch.Tensor, index: torch.Tensor, outside: float) -> torch.Tensor:
    """values at (P, 3) indices of the grid padded by one cell with `outside` (without making the padded copy)."""
    inner = index - 1
    sizes = torch.tensor(values.shape, device=values.device)
    within = ((inner >= 0) & (inner < sizes)).all(-1)
    inner = torch.minimum(inner.clamp(min=0), sizes - 1)
    return torch.where(within, values[inner[:, 0], inner[:, 1], inner[:, 2]], outside)
