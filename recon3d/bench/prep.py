"""`recon3d bench prep`: seconds per mesh for each step of preparing a sample, then wall seconds per mesh with each
worker count (the speed-up of the process pool on this machine)."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Dict, List, Sequence

from recon3d.config import Config
from recon3d.data.writing.executors import ordered_map
from recon3d.data.writing.prepare import prepare
from recon3d.data.writing.sources import discover


def bench_prep(cfg: Config, limit: int, workers: Sequence[int]) -> str:
    """Seconds per mesh per stage (one process), then wall seconds per mesh with each worker count."""
    items, _, kind = discover(cfg.source)
    if not items:
        raise ValueError(f"{cfg.source.root}: no inputs to benchmark")
    step = max(1, len(items) // limit)
    items = items[::step][:limit]  # spread over categories
    prepare(items[0], cfg.source.root, cfg)  # warm-up: JIT compilation and imports
    stages: Dict[str, List[float]] = defaultdict(list)
    totals = []
    for item in items:
        try:
            start = time.perf_counter()
            result = prepare(item, cfg.source.root, cfg)
        except Exception:
            continue
        totals.append(time.perf_counter() - start)
        for name, sec in result.seconds.items():
            stages[name].append(sec)
    lines = [f"prep benchmark: {len(totals)} of {len(items)} {kind} inputs from {cfg.source.root}",
             f"  voxels {cfg.geometry.voxel_resolution}^3 from a {cfg.geometry.fine_resolution}^3 fine grid, "
             f"points {cfg.geometry.point_resolutions}, {cfg.render.views} views of {cfg.render.image_size}px",
             "  stage       median s   mean s  (one process)"]
    for name, values in stages.items():
        lines.append(f"  {name:<10} {statistics.median(values):9.3f} {statistics.fmean(values):8.3f}")
    if totals:
        lines.append(f"  {'total':<10} {statistics.median(totals):9.3f} {statistics.fmean(totals):8.3f}")
    base = None
    for count in workers:
        jobs = [(item, cfg.source.root, cfg) for item in items]
        start = time.perf_counter()
        for _ in ordered_map(jobs, count):
            pass
        per_mesh = (time.perf_counter() - start) / len(items)
        base = base or per_mesh
        lines.append(f"  workers={count}: {per_mesh:.3f} s/mesh wall, {per_mesh * count:.3f} s/mesh per worker, "
                     f"speed-up {base / per_mesh:.2f}x vs workers={workers[0]}")
    return "\n".join(lines)
