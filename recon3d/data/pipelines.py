"""Reading shards for training and evaluation: per-stage decoding and exact per-rank, per-worker arithmetic.

Training (`TrainStream`): every DataLoader worker of every rank draws shards at random (weighted by their sample
counts, with replacement), shuffles samples in a buffer and yields exactly its share of the epoch's batches: an
epoch of N samples is ceil(N / (world_size x batch_size)) batches per rank, split over the workers so that their
counts differ by at most one. Randomness comes from (seed, rank, worker, epoch), so ranks never replay each other.

Evaluation (`EvalStream`): every sample exactly once per epoch over all ranks and workers. With at least as many
shards as (rank, worker) slots, whole shards go to slots round-robin; otherwise each slot reads every shard and keeps
the samples whose index is its own modulo the slot count.

A sample that fails to decode, or a shard that ends early, is skipped with a warning naming it and a running count;
the rest of the epoch goes on.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from recon3d.data import schema

log = logging.getLogger("recon3d.data")


@dataclass(frozen=True)
class ShardInfo:
    path: str
    samples: int


def dist_context(rank: Optional[int] = None, world_size: Optional[int] = None) -> tuple[int, int]:
    """(rank, world_size) from arguments, an initialised process group, or 0/1."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def worker_context() -> tuple[int, int, Optional[int]]:
    info = get_worker_info()
    return (0, 1, None) if info is None else (info.id, info.num_workers, info.seed)


class SkipCounter:
    """Counts samples skipped in this process and logs each with its reason."""

    def __init__(self) -> None:
        self.count = 0

    def skip(self, where: str, err: BaseException) -> None:
        self.count += 1
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("skipping %s: %s (%d skipped so far in this process)", where, reason, self.count)


def iter_raw(paths: Sequence[str], skips: SkipCounter,
             wanted: Optional[Callable[[str], bool]] = None) -> Iterator[Dict[str, bytes]]:
    """Raw samples (member suffix -> bytes, plus __key__ and __url__) of the given tars, in order.

    `wanted(suffix)` keeps only the members a stage decodes: the rest are skipped inside the tar reader.
    """
    from webdataset.tariterators import tarfile_samples

    select = None if wanted is None else (lambda name: wanted(name.rsplit("/", 1)[-1].partition(".")[2]))

    def handler(err: BaseException) -> bool:
        url = err.args[-1] if err.args and isinstance(err.args[-1], str) else "a shard"
        skips.skip(f"rest of {url}", err)
        return True

    for path in paths:
        if not Path(path).is_file():
            skips.skip(path, FileNotFoundError("shard file is missing"))
            continue
        yield from tarfile_samples([{"url": str(path)}], handler=handler, select_files=select)


# ---------------------------------------------------------------------------------------------------- decoding


def autoencoder_members(resolution: int, surface: bool = False) -> Callable[[str], bool]:
    keep = {schema.META, schema.VOXELS, schema.points_member(resolution), schema.values_member(resolution)}
    if surface:
        keep |= {schema.SURFACE_POINTS, schema.SURFACE_NORMALS}
    return keep.__contains__


def image_members(suffix: str) -> bool:
    return not suffix.startswith(("points_", "values_", "surface_", "right_")) and suffix not in (
        schema.VOXELS_FINE, schema.CAMERA_RT_RIGHT)


def stereo_members(suffix: str) -> bool:
    return suffix.startswith(("view_", "right_")) or suffix in (schema.META, schema.CAMERA_K, schema.CAMERA_RT)


def image_eval_members(suffix: str) -> bool:
    return image_members(suffix) or suffix in (schema.SURFACE_POINTS, schema.SURFACE_NORMALS)


def decode_autoencoder(raw: Dict[str, bytes], resolution: int, points: int, rng: random.Random) -> dict:
    """Compact arrays (see `expand_batch`): voxels (1, R, R, R) uint8, point_index (P, 3) uint8 fine-grid indices,
    point_grid (), values (P, 1) uint8. Keeping them small makes worker-to-trainer transfer 4x cheaper."""
    meta = schema.decode_meta(raw)
    voxels = schema.unpack_voxels(raw[schema.VOXELS])
    index = schema.load_npy(raw[schema.points_member(resolution)])
    values = schema.unpack_values(raw[schema.values_member(resolution)], len(index))
    if points and points < len(index):
        keep = np.sort(np.array(rng.sample(range(len(index)), points)))
        index, values = index[keep], values[keep]
    out = {"key": raw["__key__"], "voxels": voxels[None].view(np.uint8), "point_index": index,
           "point_grid": np.int32(meta["point_grid"]), "values": values[:, None].view(np.uint8)}
    if schema.SURFACE_POINTS in raw:  # evaluation streams ask for the surface samples (surface metrics)
        out["surface_points"], out["surface_normals"] = schema.unpack_surface(raw)
    return out


def expand_batch(batch: dict) -> dict:
    """Turn a compact batch into model inputs, on whatever device it now lives on (float32 everywhere):
    voxels (B, 1, R, R, R) and volume (B, D, H, W) in {0, 1}; points (B, P, 3) in [-0.5, 0.5]; values (B, P, 1) in {0, 1}."""
    if "point_index" in batch:
        grid = batch.pop("point_grid").to(torch.float32).view(-1, 1, 1)
        batch["points"] = (batch.pop("point_index").to(torch.float32) + 0.5) / grid - 0.5
        batch["values"] = batch["values"].to(torch.float32)
    for name in ("voxels", "volume"):
        if name in batch:
            batch[name] = batch[name].to(torch.float32)
    return batch


def to_float_image(image: np.ndarray, grayscale: bool) -> np.ndarray:
    """(C, H, W) float32 in [0, 1] composited over white."""
    img = image.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] in (2, 4):
        alpha = img[..., -1:]
        img = img[..., :-1] * alpha + (1.0 - alpha)
    if grayscale and img.shape[-1] == 3:
        img = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    elif not grayscale and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def _pick_view(count: int, train: bool, holdout_views: int, rng: random.Random) -> int:
    """Training draws among the first (count - holdout_views) views; evaluation reads view 0, or with
    holdout_views > 0 the last view, one that training never saw."""
    if count <= holdout_views:
        raise ValueError(f"sample has {count} views; {holdout_views} held out leaves none to train on")
    if train:
        return rng.randrange(count - holdout_views)
    return count - 1 if holdout_views else 0


def _crop_origin(height: int, width: int, crop: int, train: bool, rng: random.Random) -> tuple[int, int]:
    if crop > min(height, width):
        raise ValueError(f"crop {crop} larger than the {height}x{width} view")
    if train:
        return rng.randint(0, height - crop), rng.randint(0, width - crop)
    return (height - crop) // 2, (width - crop) // 2


def decode_image(raw: Dict[str, bytes], crop: int, train: bool, flip: bool, grayscale: bool,
                 rng: random.Random, holdout_views: int = 0) -> dict:
    """One view (see `_pick_view`): image (C, crop, crop), its index, camera K/[R|t] adjusted for crop and flip,
    and the voxels."""
    views = sorted(k for k in raw if schema.is_view_member(k))
    view = _pick_view(len(views), train, holdout_views, rng)
    image = to_float_image(schema.load_png(raw[views[view]]), grayscale)
    y0, x0 = _crop_origin(*image.shape[1:], crop, train, rng)
    image = image[:, y0:y0 + crop, x0:x0 + crop]
    has_camera = schema.CAMERA_K in raw
    if has_camera:
        k = schema.load_npy(raw[schema.CAMERA_K])[view].copy()
        rt = schema.load_npy(raw[schema.CAMERA_RT])[view]
        k[0, 2] -= x0
        k[1, 2] -= y0
    else:
        k, rt = np.full((3, 3), np.nan, np.float32), np.full((3, 4), np.nan, np.float32)
    if train and flip and rng.random() < 0.5:
        image = image[:, :, ::-1]
        k = k.copy()
        k[0, 0], k[0, 2] = -k[0, 0], crop - k[0, 2]  # u' = crop - u
    out = {"key": raw["__key__"], "image": np.ascontiguousarray(image), "view": view,
           "camera_k": k.astype(np.float32), "camera_rt": rt.astype(np.float32), "has_camera": has_camera,
           "voxels": schema.unpack_voxels(raw[schema.VOXELS])[None].view(np.uint8)}
    if schema.SURFACE_POINTS in raw:  # evaluation streams ask for the surface samples (shape-space metrics)
        out["surface_points"], out["surface_normals"] = schema.unpack_surface(raw)
    return out


def decode_volume(raw: Dict[str, bytes], crop: int, train: bool, flip: bool, grayscale: bool, rng: random.Random,
                  holdout_views: int, depth: int) -> dict:
    """A view as `decode_image` gives it, plus volume (depth, crop/4, crop/4) uint8: the shape's occupancy in that
    view's frustum (rows and columns follow the crop, flip included; slices follow camera depth), derived here from
    the stored voxels and camera, so shards need not store it."""
    out = decode_image(raw, crop, train, flip, grayscale, rng, holdout_views)
    if not out["has_camera"]:
        raise ValueError("sample has no cameras: the view-aligned volume needs them")
    from recon3d.geometry.camera import view_aligned_occupancy

    voxels = out.pop("voxels")[0].astype(bool)
    out["volume"] = view_aligned_occupancy(voxels, out["camera_k"].astype(np.float64),
                                           out["camera_rt"].astype(np.float64), crop, crop // 4,
                                           depth).view(np.uint8)
    return out


def decode_stereo(raw: Dict[str, bytes], crop: int, train: bool, grayscale: bool, rng: random.Random,
                  holdout_views: int = 0) -> dict:
    """A rectified pair: left, right (C, crop, crop) in [0, 1], the same crop of both (never flipped: a mirrored
    pair would be a right/left pair), and mean_disparity (): f * baseline / camera distance in pixels, the
    disparity of the object's centre (the "shift by the mean disparity" baseline)."""
    meta = schema.decode_meta(raw)
    if not meta.get("stereo_baseline"):
        raise ValueError("sample has no right-eye views (shards built with render.stereo_baseline=0)")
    views = sorted(k for k in raw if schema.is_view_member(k))
    view = _pick_view(len(views), train, holdout_views, rng)
    left = to_float_image(schema.load_png(raw[views[view]]), grayscale)
    right = to_float_image(schema.load_png(raw[schema.right_view_member(view)]), grayscale)
    y0, x0 = _crop_origin(*left.shape[1:], crop, train, rng)
    focal = float(schema.load_npy(raw[schema.CAMERA_K])[view][0, 0])
    distance = float(np.linalg.norm(schema.load_npy(raw[schema.CAMERA_RT])[view][:, 3]))
    return {"key": raw["__key__"], "view": view,
            "left": np.ascontiguousarray(left[:, y0:y0 + crop, x0:x0 + crop]),
            "right": np.ascontiguousarray(right[:, y0:y0 + crop, x0:x0 + crop]),
            "mean_disparity": np.float32(focal * meta["stereo_baseline"] / distance)}


class AutoencoderDecoder:
    """Picklable per-stage decoder (workers import only this module: no Lightning in worker start-up)."""

    def __init__(self, resolution: int, points: int) -> None:
        self.resolution, self.points = resolution, points

    def __call__(self, raw: dict, rng: random.Random, train: bool) -> dict:
        # evaluation subsets are fixed per shape, so metrics compare like with like across epochs
        return decode_autoencoder(raw, self.resolution, self.points, rng if train else random.Random(raw["__key__"]))


class ImageDecoder:
    def __init__(self, crop: int, flip: bool, grayscale: bool, holdout_views: int = 0) -> None:
        self.crop, self.flip, self.grayscale, self.holdout_views = crop, flip, grayscale, holdout_views

    def __call__(self, raw: dict, rng: random.Random, train: bool) -> dict:
        return decode_image(raw, self.crop, train, self.flip, self.grayscale, rng, self.holdout_views)


class VolumeDecoder(ImageDecoder):
    def __init__(self, crop: int, flip: bool, grayscale: bool, holdout_views: int, depth: int) -> None:
        super().__init__(crop, flip, grayscale, holdout_views)
        self.depth = depth

    def __call__(self, raw: dict, rng: random.Random, train: bool) -> dict:
        return decode_volume(raw, self.crop, train, self.flip, self.grayscale, rng, self.holdout_views, self.depth)


class StereoDecoder:
    def __init__(self, crop: int, grayscale: bool, holdout_views: int = 0) -> None:
        self.crop, self.grayscale, self.holdout_views = crop, grayscale, holdout_views

    def __call__(self, raw: dict, rng: random.Random, train: bool) -> dict:
        return decode_stereo(raw, self.crop, train, self.grayscale, rng, self.holdout_views)


def collate(samples: List[dict]) -> dict:
    """Stack a list of decoded samples into tensors (keys stay a list of strings)."""
    out = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        out[name] = values if isinstance(values[0], str) else torch.as_tensor(np.stack(values))
    return out


# ---------------------------------------------------------------------------------------------------- streams


class _Stream(IterableDataset):
    def __init__(self, shards: Sequence[ShardInfo], decode: Callable[[dict, random.Random, bool], dict],
                 batch_size: int, *, members: Optional[Callable[[str], bool]] = None, seed: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        super().__init__()
        self.shards = [s for s in shards if s.samples > 0]
        self.decode = decode
        self.members = members
        self.batch_size = batch_size
        self.seed = seed
        # Resolved here, in the trainer process: DataLoader workers have no process group of their own.
        self._rank, self._world = dist_context(rank, world_size)
        self.skips = SkipCounter()
        self._calls = 0  # iterations started in this process (distinguishes epochs without workers)

    def _decoded(self, raws: Iterator[dict], rng: random.Random, train: bool) -> Iterator[dict]:
        for raw in raws:
            try:
                yield self.decode(raw, rng, train)
            except Exception as err:  # one bad sample must not end the epoch
                self.skips.skip(f"sample {raw.get('__key__')!r} in {raw.get('__url__')}", err)


class TrainStream(_Stream):
    """Infinite resampling over the train shards, cut into exact per-worker batch counts (see module doc)."""

    def __init__(self, shards, decode, batch_size, *, samples_per_epoch: int = 0, shuffle_buffer: int = 64,
                 **kwargs) -> None:
        super().__init__(shards, decode, batch_size, **kwargs)
        self.samples_per_epoch = samples_per_epoch or sum(s.samples for s in self.shards)
        self.shuffle_buffer = shuffle_buffer

    def __len__(self) -> int:
        _, world = dist_context(self._rank, self._world)
        return math.ceil(self.samples_per_epoch / (world * self.batch_size))

    def batches_for_worker(self, worker: int, workers: int) -> int:
        steps = len(self)
        return steps // workers + (1 if worker < steps % workers else 0)

    def __iter__(self) -> Iterator[dict]:
        if not self.shards:
            raise ValueError("no training samples: the train split is empty")
        rank, _ = dist_context(self._rank, self._world)
        worker, workers, torch_seed = worker_context()
        self._calls += 1  # counts epochs inside a persistent worker, whose torch seed stays the same
        rng = random.Random(hash((self.seed, rank, worker, torch_seed, self._calls)))
        wanted = self.batches_for_worker(worker, workers)
        weights = [s.samples for s in self.shards]

        def endless() -> Iterator[dict]:
            misses = 0
            while True:
                shard = rng.choices(self.shards, weights=weights)[0]
                got = False
                for sample in self._decoded(iter_raw([shard.path], self.skips, self.members), rng, True):
                    got = True
                    yield sample
                misses = 0 if got else misses + 1
                if misses > 10 * len(self.shards):
                    raise RuntimeError("no decodable training sample in any shard (see the warnings above)")

        buffer: List[dict] = []
        batch: List[dict] = []
        produced = 0
        stream = endless()
        while produced < wanted:
            buffer.append(next(stream))
            if len(buffer) < self.shuffle_buffer:
                continue
            batch.append(buffer.pop(rng.randrange(len(buffer))))
            if len(batch) == self.batch_size:
                yield collate(batch)
                produced, batch = produced + 1, []


class EvalStream(_Stream):
    """Every sample once per epoch over all ranks and workers, in a fixed order (see module doc)."""

    def __init__(self, shards, decode, batch_size, *, num_workers: int = 0, **kwargs) -> None:
        super().__init__(shards, decode, batch_size, **kwargs)
        self.num_workers = num_workers  # the DataLoader's, so that len() can count each worker's share

    def _slot_samples(self, slot: int, slots: int) -> tuple[List[ShardInfo], Optional[int]]:
        if len(self.shards) >= slots:
            return self.shards[slot::slots], None
        return self.shards, slot

    def _rank_batches(self, rank: int, world: int) -> int:
        workers = max(1, self.num_workers)
        return sum(math.ceil(self._slot_count(rank * workers + w, world * workers) / self.batch_size)
                   for w in range(workers))

    def __len__(self) -> int:
        """Batches of this rank. Under DDP every rank yields as many batches as the busiest one: collective
        operations (synced metrics) need every rank to run the same number of steps, so a rank with fewer samples
        repeats its first batch; up to world - 1 batches are then counted twice (as DistributedSampler pads)."""
        rank, world = dist_context(self._rank, self._world)
        if world == 1:
            return self._rank_batches(0, 1)
        return max(self._rank_batches(r, world) for r in range(world))

    def _slot_count(self, slot: int, slots: int) -> int:
        shards, modulo = self._slot_samples(slot, slots)
        if modulo is None:
            return sum(s.samples for s in shards)
        total = sum(s.samples for s in shards)
        return total // slots + (1 if slot < total % slots else 0)

    def __iter__(self) -> Iterator[dict]:
        rank, world = dist_context(self._rank, self._world)
        worker, workers, _ = worker_context()
        slot, slots = rank * workers + worker, world * workers
        shards, modulo = self._slot_samples(slot, slots)
        rng = random.Random(self.seed)
        raws = iter_raw([s.path for s in shards], self.skips, self.members)
        if modulo is not None:
            raws = (raw for i, raw in enumerate(raws) if i % slots == modulo)
        batch: List[dict] = []
        first = None
        for sample in self._decoded(raws, rng, False):
            batch.append(sample)
            if len(batch) == self.batch_size:
                first = first or batch
                yield collate(batch)
                batch = []
        if batch:
            first = first or batch
            yield collate(batch)
        padding = len(self) - self._rank_batches(rank, world) if world > 1 and worker == 0 else 0
        if padding > 0:
            if first is None:  # this rank read nothing: borrow the split's first sample
                first = list(self._decoded(iter_raw([self.shards[0].path], self.skips, self.members), rng,
                                           False))[:1]
            for _ in range(padding):
                yield collate(first)
