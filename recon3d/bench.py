"""`recon3d bench`: figures an engineer needs on a new machine: prep speed, loader speed, shard bytes.

Each benchmark prints medians (and ratios against a baseline measured in the same run); nothing here asserts a time.
"""

from __future__ import annotations

import statistics
import tarfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence

from recon3d.config import Config
from recon3d.data.writer import load_manifest


def bench_prep(cfg: Config, limit: int, workers: Sequence[int]) -> str:
    """Seconds per mesh per stage (one process), then wall seconds per mesh with each worker count."""
    from recon3d.data.prepare import prepare
    from recon3d.data.sources import discover
    from recon3d.data.writer import ordered_map

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


def _loader_rate(shard_dir: str, stage: str, workers: int, batches: int, batch_size: int, resolution: int) -> float:
    from recon3d.data.datamodule import ShardDataModule
    from recon3d.data.pipelines import expand_batch

    dm = ShardDataModule(shards=shard_dir, stage=stage, batch_size=batch_size, num_workers=workers,
                         point_resolution=resolution, shuffle_buffer=8,
                         train_samples_per_epoch=(batches + 2 + workers) * batch_size)
    dm.setup()
    iterator = (expand_batch(b) for b in dm.train_dataloader())
    next(iterator)  # warm-up: worker start and first shard open
    start = time.perf_counter()
    done = sum(1 for _, _ in zip(range(batches), iterator))
    return done * batch_size / (time.perf_counter() - start)


def bench_loader(shard_dir: str, stage: str, workers: Sequence[int], batches: int, batch_size: int,
                 resolution: int, repeats: int = 3) -> str:
    """Training-loader samples/s for each DataLoader worker count: median of `repeats` runs, interleaved."""
    rates: Dict[int, List[float]] = defaultdict(list)
    for _ in range(repeats):  # interleaved, so that machine noise hits every setting alike
        for count in workers:
            rates[count].append(_loader_rate(shard_dir, stage, count, batches, batch_size, resolution))
    lines = [f"loader benchmark: {shard_dir}, stage={stage}, batch={batch_size}, {batches} batches after warm-up, "
             f"median of {repeats}"]
    base = statistics.median(rates[workers[0]])
    for count in workers:
        rate = statistics.median(rates[count])
        lines.append(f"  num_workers={count}: {rate:8.1f} samples/s  ({rate / base:.2f}x vs num_workers={workers[0]}; "
                     f"runs {', '.join(f'{r:.0f}' for r in rates[count])})")
    return "\n".join(lines)


def bench_shards(shard_dir: str) -> str:
    """Bytes per sample, by member kind, with the tar format's own overhead."""
    manifest = load_manifest(shard_dir)
    sizes: Dict[str, int] = defaultdict(int)
    total_bytes, samples = 0, 0
    for shard in manifest["shards"]:
        path = Path(shard_dir) / f"{shard['name']}.tar"
        total_bytes += path.stat().st_size
        samples += shard["samples"]
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                suffix = info.name.rsplit("/", 1)[-1].partition(".")[2]
                kind = suffix.split("_")[0].split(".")[0] if suffix.startswith(("view_", "camera_")) else suffix
                sizes[kind] += info.size
    if not samples:
        raise ValueError(f"{shard_dir}: no samples")
    lines = [f"shard sizes: {samples} samples in {len(manifest['shards'])} shards, "
             f"{total_bytes / samples / 1024:.1f} KiB per sample"]
    for kind, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:<16} {size / samples / 1024:8.1f} KiB/sample")
    lines.append(f"  {'tar headers':<16} {(total_bytes - sum(sizes.values())) / samples / 1024:8.1f} KiB/sample")
    return "\n".join(lines)
