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
from recon3d.data.shards import load_manifest


def bench_prep(cfg: Config, limit: int, workers: Sequence[int]) -> str:
    """Seconds per mesh per stage (one process), then wall seconds per mesh with each worker count."""
    from recon3d.data.prepare import prepare
    from recon3d.data.sources import discover
    from recon3d.data.executors import ordered_map

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


def bench_train_step(cfg: Config, batch_size: int, points: int, steps: int, warmup: int, device: str) -> str:
    """Forward+backward+Adam step of the configured autoencoder: a plain PyTorch loop vs our Lightning task."""
    import torch

    from recon3d.config import to_dict
    from recon3d.models.implicit_decoder import Autoencoder

    res = cfg.geometry.voxel_resolution
    batch = {k: v.to(device) for k, v in random_batch(res, batch_size, points).items()}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    torch.manual_seed(0)
    model = Autoencoder(**to_dict(cfg.model), resolution=res).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(batch["voxels"], batch["points"]), batch["values"])
        loss.backward()
        opt.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    plain = statistics.median(times)
    lightning = _lightning_step_time(cfg, batch, steps, warmup, device)
    per_step = batch_size * points
    return "\n".join([
        f"train-step benchmark on {device}: batch {batch_size} x {points} points, voxels {res}^3, "
        f"latent {cfg.model.latent_dim}, decoder {list(cfg.model.decoder_widths)}; median of {steps} after {warmup}",
        f"  plain PyTorch loop: {plain * 1000:8.1f} ms/step  {per_step / plain:12.0f} points/s",
        f"  AutoencoderTask:    {lightning * 1000:8.1f} ms/step  {per_step / lightning:12.0f} points/s  "
        f"(ratio to plain: {lightning / plain:.3f})"])


def random_batch(resolution: int, batch_size: int, points: int) -> dict:
    """A fixed random autoencoder batch on the CPU (seeded): voxels, points in the unit cube, occupancy values."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return {"voxels": (torch.rand(batch_size, 1, resolution, resolution, resolution, generator=gen) > 0.7).float(),
            "points": torch.rand(batch_size, points, 3, generator=gen) - 0.5,
            "values": (torch.rand(batch_size, points, 1, generator=gen) > 0.5).float()}


def bench_task(cfg: Config):
    """The configured AutoencoderTask for the bench's own batches (no shards: no stored point sets to check)."""
    from recon3d.tasks.autoencoder import AutoencoderTask

    manifest = {"source": {"kind": "imnet_hdf5"},
                "config": {"geometry": {"point_resolutions": [], "voxel_resolution": cfg.geometry.voxel_resolution}}}
    return AutoencoderTask.from_config(cfg, manifest)


def repeat_loader(batch: dict, count: int):
    """A loader yielding the same CPU batch `count` times (each rank its own copy)."""
    from torch.utils.data import DataLoader, IterableDataset

    class Repeat(IterableDataset):
        def __iter__(self):
            for _ in range(count):
                yield {k: v.cpu() for k, v in batch.items()}

    return DataLoader(Repeat(), batch_size=None)


def step_timer(cuda: bool, warmup: int):
    """A callback keeping the seconds of every training step after the first `warmup` (synchronised on CUDA)."""
    import lightning as L
    import torch

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_train_batch_start(self, trainer, module, b, i):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, out, b, i):
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                self.times.append(time.perf_counter() - self.start)

    return StepTimer()


def _lightning_step_time(cfg: Config, batch: dict, steps: int, warmup: int, device: str) -> float:
    import lightning as L
    import torch

    cuda = device.startswith("cuda")
    timer = step_timer(cuda, warmup)
    torch.manual_seed(0)
    task = bench_task(cfg)
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, max_steps=warmup + steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=repeat_loader(batch, warmup + steps))
    return statistics.median(timer.times)


def bench_lfd(cfg: Config, limit: int = 0) -> str:
    """Light field descriptors of every mesh under cfg.source.root: seconds per descriptor and leave-one-out
    retrieval precision@1 per category (the nearest other shape by LFD distance has the same category)."""
    import numpy as np

    from recon3d.data.formats import RejectError, load_mesh
    from recon3d.data.sources import discover
    from recon3d.geometry.lfd import lfd_distance, light_field_descriptor, precision_at_1
    from recon3d.geometry.transform import normalise

    items, _, _ = discover(cfg.source)
    items = [i for i in items if i.kind == "mesh"][:limit or None]
    descriptors, categories, seconds = [], [], []
    for item in items:
        try:
            mesh = load_mesh(Path(cfg.source.root) / item.path)
        except RejectError:
            continue
        verts = normalise(mesh.vertices, mesh.faces, up=item.up, front=item.front).apply(mesh.vertices)
        start = time.perf_counter()
        descriptors.append(light_field_descriptor(verts, mesh.faces))
        seconds.append(time.perf_counter() - start)
        categories.append(item.category)
    if len(descriptors) < 2:
        raise ValueError(f"{cfg.source.root}: fewer than two readable meshes")
    start = time.perf_counter()
    count = len(descriptors)
    distances = np.zeros((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            distances[i, j] = distances[j, i] = lfd_distance(descriptors[i], descriptors[j])
    pair_seconds = (time.perf_counter() - start) / (count * (count - 1) / 2)
    lines = [f"LFD on {count} meshes: {statistics.median(seconds):.2f} s per descriptor (median), "
             f"{1000 * pair_seconds:.1f} ms per distance",
             f"{'category':<24}{'shapes':>8}{'precision@1':>14}"]
    for category, row in precision_at_1(distances, categories).items():
        lines.append(f"{category:<24}{row['shapes']:>8}{row['precision@1']:>14.3f}")
    return "\n".join(lines)
