"""`recon3d bench loader`: the training loader's samples/s for each worker count, beside a plain h5py reader of
IM-NET's own layout built from the same shapes, all measured interleaved in one run.

The baseline (a yardstick, not a feature): one hdf5 file as IM-NET ships its data, gzip level 9 and one chunk per
shape (autoencoder stage: voxels (N, R, R, R, 1), points_R (N, P, 3), values_R (N, P, 1), uint8) or per view (image
stage: pixels (N, V, H, W) uint8 grayscale); each sample is one random shape (or view, centre-cropped) read with
h5py and stacked into a batch of tensors, as a plain PyTorch Dataset would.

Two regimes: the loader alone (the main process only takes batches), and "training", where the main process is
busy for a fixed time per batch (about what one process needs to load a batch, so that with num_workers=0 loading
and training share one timeline): there workers overlap loading with training.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence

import h5py
import numpy as np
import torch

from recon3d.bench.timing import loader_rate
from recon3d.data import schema
from recon3d.data.loading.datamodule import ShardDataModule
from recon3d.data.loading.pipelines import to_float_image
from recon3d.data.loading.shards import load_manifest, read_tar


def write_baseline_hdf5(shard_dir: str, out: Path, resolution: int, limit: int = 256) -> int:
    """IM-NET-layout hdf5 of (up to `limit`) training shapes of a shard folder; returns the shapes written."""
    dm = ShardDataModule(shards=shard_dir, num_workers=0, rank=0, world_size=1)
    dm.setup()
    raws = []
    for info in dm.shard_infos("train"):
        raws.extend(read_tar(info.path).values())
        if len(raws) >= limit:
            break
    raws = raws[:limit]
    if not raws:
        raise ValueError(f"{shard_dir}: no training samples for the baseline")
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as h5:
        voxels = np.stack([schema.unpack_voxels(r[schema.VOXELS]) for r in raws]).astype(np.uint8)[..., None]
        h5.create_dataset("voxels", data=voxels, compression="gzip", compression_opts=9,
                          chunks=(1,) + voxels.shape[1:])
        points = np.stack([schema.load_npy(r[schema.points_member(resolution)]) for r in raws])
        values = np.stack([schema.unpack_values(r[schema.values_member(resolution)], points.shape[1])
                           for r in raws]).astype(np.uint8)[..., None]
        for name, data in ((f"points_{resolution}", points), (f"values_{resolution}", values)):
            h5.create_dataset(name, data=data, compression="gzip", compression_opts=9, chunks=(1,) + data.shape[1:])
        views = schema.view_count(raws[0])
        if views:
            pixels = np.stack([[_gray(schema.view_image(r, v)) for v in range(views)] for r in raws])
            h5.create_dataset("pixels", data=pixels, compression="gzip", compression_opts=9,
                              chunks=(1, 1) + pixels.shape[2:])
    tmp.replace(out)
    return len(raws)


def _gray(image: np.ndarray) -> np.ndarray:
    return np.rint(to_float_image(image, True)[0] * 255).astype(np.uint8)


def baseline_batches(path: Path, stage: str, resolution: int, batch_size: int, crop: int,
                     seed: int = 0) -> Iterator[dict]:
    """Endless batches from the baseline file, one random shape (or view) per sample."""
    rng = random.Random(seed)
    with h5py.File(path, "r") as h5:
        if stage == "autoencoder":
            voxels, points, values = h5["voxels"], h5[f"points_{resolution}"], h5[f"values_{resolution}"]
            while True:
                rows = [rng.randrange(len(voxels)) for _ in range(batch_size)]
                yield {"voxels": torch.as_tensor(np.stack([voxels[i] for i in rows])),
                       "points": torch.as_tensor(np.stack([points[i] for i in rows])),
                       "values": torch.as_tensor(np.stack([values[i] for i in rows]))}
        pixels = h5["pixels"]
        shapes, views, height, width = pixels.shape
        y0, x0 = (height - crop) // 2, (width - crop) // 2
        while True:
            picks = [(rng.randrange(shapes), rng.randrange(views)) for _ in range(batch_size)]
            yield {"image": torch.as_tensor(np.stack([pixels[i, v, y0:y0 + crop, x0:x0 + crop][None]
                                                      for i, v in picks]))}


def _loader_batches(shard_dir: str, stage: str, workers: int, batches: int, batch_size: int,
                    resolution: int, crop: int) -> Iterator[dict]:
    dm = ShardDataModule(shards=shard_dir, stage=stage, batch_size=batch_size, num_workers=workers, crop_size=crop,
                         point_resolution=resolution, train_samples_per_epoch=(batches + 2 + workers) * batch_size)
    dm.setup()
    return iter(dm.train_dataloader())


def bench_loader(shard_dir: str, stage: str, workers: Sequence[int], batches: int, batch_size: int,
                 resolution: int, repeats: int = 3, crop: int = 128) -> str:
    """Medians of interleaved runs: the h5py baseline and the loader with each worker count, alone and training
    (the image stage crops min(crop, view size), as training does)."""
    manifest = load_manifest(shard_dir)
    crop = min(crop, int(manifest["config"]["render"]["image_size"]))
    digest = hashlib.sha256(json.dumps(manifest["shards"], sort_keys=True).encode()).hexdigest()[:10]
    out = Path(shard_dir) / f".bench-baseline-{stage}-{resolution}-{digest}.h5"  # in the folder named; reused
    if not out.is_file():
        write_baseline_hdf5(shard_dir, out, resolution)
    settings: Dict[str, Callable[[], Iterator[dict]]] = {
        "h5py baseline": lambda: baseline_batches(out, stage, resolution, batch_size, crop)}
    for count in workers:
        settings[f"recon3d num_workers={count}"] = (
            lambda count=count: _loader_batches(shard_dir, stage, count, batches, batch_size, resolution, crop))
    first = f"recon3d num_workers={workers[0]}"
    busy = batch_size / statistics.median(loader_rate(settings[first], batches, batch_size, 0.0) for _ in range(2))
    rates: Dict[tuple, List[float]] = defaultdict(list)
    for _ in range(repeats):  # interleaved, so that machine noise hits every setting alike
        for regime, busy_s in (("alone", 0.0), ("training", busy)):
            for name, make in settings.items():
                rates[name, regime].append(loader_rate(make, batches, batch_size, busy_s))
    unit = "samples/s" if stage == "autoencoder" else "views/s"
    lines = [f"loader benchmark: {shard_dir}, stage={stage}, batch={batch_size}, {batches} batches after warm-up, "
             f"median of {repeats} interleaved runs; 'training': the main process busy {busy * 1e3:.1f} ms per batch"]
    for regime in ("alone", "training"):
        base = statistics.median(rates["h5py baseline", regime])
        ref = statistics.median(rates[first, regime])
        lines.append(f" {regime}:")
        for name in settings:
            rate = statistics.median(rates[name, regime])
            runs = ", ".join(f"{r:.0f}" for r in rates[name, regime])
            lines.append(f"  {name:<26} {rate:8.0f} {unit}  {rate / base:5.2f}x baseline  {rate / ref:5.2f}x "
                         f"{first.split()[-1]}  (runs {runs})")
    return "\n".join(lines)
