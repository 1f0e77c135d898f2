"""Near-identical shapes in a shard set: ShapeNet holds the same model under several ids, sometimes with a part
moved or a few faces changed, and its splits put such twins on both sides. Byte-identical voxels are found by
their digest; near-identical ones by voxel IoU on a coarse grid (every voxel grid max-pooled to at most 32^3).

Comparing every pair is quadratic (ShapeNet's 43k shapes make 9e8 pairs), so candidates come from MinHash
locality-sensitive hashing: the Jaccard index of two occupancy sets is their IoU, and two sets agree on one MinHash
with probability equal to it. With BANDS bands of ROWS hashes, a pair of IoU s shares a band with probability
1 - (1 - s^ROWS)^BANDS: 0.99998 at s = 0.95, 0.12 at s = 0.5. Each candidate pair is then measured exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

COARSE = 32  # the grid near-duplicates are measured on
ROWS, BANDS = 6, 8
THRESHOLD = 0.95  # voxel IoU at COARSE^3 from which two shapes count as near-identical
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)


def coarse_grid(voxels: np.ndarray, size: int = COARSE) -> np.ndarray:
    """(g, g, g) bool: `voxels` (R, R, R) max-pooled to the largest g <= size that divides R."""
    res = voxels.shape[0]
    g = max(d for d in range(1, min(res, size) + 1) if res % d == 0)
    f = res // g
    return voxels.reshape(g, f, g, f, g, f).any(axis=(1, 3, 5))


@dataclass
class Pair:
    first: Tuple[str, str]  # (key, split)
    second: Tuple[str, str]
    iou: float

    @property
    def across_splits(self) -> bool:
        return self.first[1] != self.second[1]

    def describe(self) -> str:
        return f"{self.first[0]} ({self.first[1]}) ~ {self.second[0]} ({self.second[1]}) IoU {self.iou:.3f}"


@dataclass
class NearDuplicates:
    """Shapes added one at a time (key, split, voxel grid); `pairs()` finds those at IoU >= threshold."""

    threshold: float = THRESHOLD
    seed: int = 0
    _names: List[Tuple[str, str]] = field(default_factory=list)
    _bits: List[np.ndarray] = field(default_factory=list)
    _counts: List[int] = field(default_factory=list)
    _bands: Dict[Tuple[int, bytes], List[int]] = field(default_factory=dict)
    _perms: Dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, key: str, split: str, voxels: np.ndarray) -> None:
        grid = coarse_grid(np.asarray(voxels, dtype=bool))
        cells = np.flatnonzero(grid)
        if not len(cells):
            return  # an empty grid is no shape; verify reports it elsewhere
        perms = self._perm(grid.size)
        signature = perms[:, cells].min(axis=1)
        index = len(self._names)
        self._names.append((key, split))
        self._bits.append(np.packbits(grid.ravel()))
        self._counts.append(len(cells))
        for band in range(BANDS):
            rows = signature[band * ROWS:(band + 1) * ROWS]
            self._bands.setdefault((band, rows.tobytes()), []).append(index)

    def pairs(self) -> List[Pair]:
        """Every pair at IoU >= threshold, measured on the coarse grids, most similar first."""
        candidates = set()
        for members in self._bands.values():
            for i, a in enumerate(members):
                candidates.update((a, b) for b in members[i + 1:])
        found = []
        for a, b in sorted(candidates):
            if self._bits[a].shape != self._bits[b].shape:
                continue  # grids of different sizes are not compared
            smaller, larger = sorted((self._counts[a], self._counts[b]))
            if smaller < self.threshold * larger:  # IoU <= smaller / larger: cannot reach the threshold
                continue
            inter = int(_POPCOUNT[self._bits[a] & self._bits[b]].sum())
            iou = inter / (self._counts[a] + self._counts[b] - inter)
            if iou >= self.threshold:
                found.append(Pair(self._names[a], self._names[b], iou))
        return sorted(found, key=lambda p: (-p.iou, p.first, p.second))

    def _perm(self, cells: int) -> np.ndarray:
        """ROWS x BANDS random permutations of the cells (the same for every shape of that grid size)."""
        if cells not in self._perms:
            rng = np.random.default_rng(self.seed)
            self._perms[cells] = np.stack([rng.permutation(cells).astype(np.int32) for _ in range(ROWS * BANDS)])
        return self._perms[cells]
