"""Streams of batches over shard files, for training and evaluation: exact per-rank, per-worker arithmetic.


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
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from recon3d.data.shards import ShardInfo

log = logging.getLogger("recon3d.data")


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


def collate(samples: List[dict]) -> dict:
    """Stack a list of decoded samples into tensors (keys stay a list of strings)."""
    out = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        out[name] = values if isinstance(values[0], str) else torch.as_tensor(np.stack(values))
    return out




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
        self.epoch = 0  # the trainer's epoch when this stream was made (set_epoch); see TrainStream.__iter__
        self._calls = 0  # iterations started in this process since then

    def set_epoch(self, epoch: int) -> None:
        """Start counting epochs at `epoch` (the trainer's, when its loaders are made): a resumed run then draws the
        order of the epoch it resumes at, not the first epoch's again."""
        self.epoch, self._calls = int(epoch), 0

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
        worker, workers, _ = worker_context()
        # The epoch, not torch's worker seed: after a restart torch's seeds repeat the first run's. A persistent
        # worker keeps its copy of this stream across epochs, so epochs are counted from the one it was made at.
        epoch = self.epoch + self._calls
        self._calls += 1
        rng = random.Random(hash((self.seed, rank, worker, epoch)))
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
