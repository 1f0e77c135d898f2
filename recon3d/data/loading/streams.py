"""Streams of batches over shard files, for training and evaluation: exact per-rank, per-worker arithmetic.

Training (`TrainStream`): an epoch of N samples is ceil(N / (world_size x batch_size)) batches per rank, split
over the workers so that their counts differ by at most one. Indexed shards (loading/index.py) are read sample by
sample in a per-epoch permutation of the whole training split (a pure function of seed and epoch); shards without
an index are streamed, drawn at random (weighted by their sample counts, with replacement) into a shuffle buffer per
worker. Randomness comes from (seed, epoch, rank, batch or worker), so ranks never replay each other, and a resumed
epoch can skip exactly the batches it had taken (`skip_batches`).

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
from webdataset.tariterators import group_by_keys, tar_file_expander, tarfile_samples

from recon3d.data.loading.index import open_indexed
from recon3d.data.loading.remote import is_remote, open_url
from recon3d.data.loading.shards import ShardInfo
from recon3d.data.loading.transfer import SlotWriter, collate
from recon3d.storage import is_object_url

SLOTS = 4  # shared buffers per worker: DataLoader's prefetch_factor (2) in flight, one held back, one being written

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
    select = None if wanted is None else (lambda name: wanted(name.rsplit("/", 1)[-1].partition(".")[2]))

    def handler(err: BaseException) -> bool:
        url = err.args[-1] if err.args and isinstance(err.args[-1], str) else "a shard"
        skips.skip(f"rest of {url}", err)
        return True

    for path in paths:
        if not is_remote(path) and not Path(path).is_file():
            skips.skip(path, FileNotFoundError("shard file is missing"))
            continue
        if is_object_url(path):  # s3://, gs://, ...: opened through fsspec (webdataset's gopen has no such schemes)
            try:
                opened = [{"url": str(path), "stream": open_url(str(path))}]
            except Exception as err:
                skips.skip(str(path), err)
                continue
            yield from group_by_keys(tar_file_expander(opened, handler=handler, select_files=select), handler=handler)
        else:
            yield from tarfile_samples([{"url": str(path)}], handler=handler, select_files=select)


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
        self.readers = _indexed(self.shards)  # one IndexedShard per shard when all have an index, else None
        self.slot_writer = None  # made in each DataLoader worker (recon3d.data.loading.transfer)

    def _start(self) -> None:
        """Called as each iteration starts: a worker gets its shared buffers, and a new mark for them."""
        if get_worker_info() is not None:
            if self.slot_writer is None:
                self.slot_writer = SlotWriter(SLOTS)
            self.slot_writer.new_iteration()

    def _out(self, samples: List[dict]) -> dict:
        return collate(samples) if self.slot_writer is None else self.slot_writer.pack(samples)

    def set_epoch(self, epoch: int) -> None:
        """Start counting epochs at `epoch` (the trainer's, when its loaders are made): a resumed run then draws the
        order of the epoch it resumes at, not the first epoch's again."""
        self.epoch, self._calls = int(epoch), 0

    def _decoded(self, raws: Iterator[dict], rng: random.Random, train: bool) -> Iterator[dict]:
        for raw in raws:
            sample = self._decode_one(raw, rng, train)
            if sample is not None:
                yield sample

    def _decode_one(self, raw, rng: random.Random, train: bool) -> Optional[dict]:
        try:
            return self.decode(raw, rng, train)
        except Exception as err:  # one bad sample must not end the epoch
            self.skips.skip(f"sample {raw.get('__key__')!r} in {raw.get('__url__')}", err)
            return None


def _indexed(shards: Sequence[ShardInfo]):
    """Readers for every shard when each has a usable index (random access), else None (the streaming reader; a
    shard with a bad index is named in a warning)."""
    readers = []
    for shard in shards:
        if is_remote(shard.path):  # streamed from where it is (loader.cache_dir makes a local, indexed copy)
            return None
        reader, why = open_indexed(shard.path)
        if reader is None:
            if why:
                log.warning("%s: %s; reading the shards as a stream (rebuild or `recon3d shards upgrade`)",
                            shard.path, why)
            return None
        if len(reader) != shard.samples:
            log.warning("%s: its index lists %d samples, the manifest %d; reading the shards as a stream",
                        shard.path, len(reader), shard.samples)
            return None
        readers.append(reader)
    return readers


class TrainStream(_Stream):
    """The training epoch, cut into exact per-rank and per-worker batch counts (see module doc).

    Indexed shards: an epoch is a prefix of a concatenation of permutations of every training sample, a pure
    function of (seed, epoch); rank r takes every world_size-th sample, batch b of the rank goes to worker
    b mod num_workers (DataLoader hands batches on in that order) and its augmentation draws from (seed, epoch, rank,
    b), so the batches do not depend on the worker count. Shards without an index are streamed: shards drawn at
    random (weighted by sample count, with replacement) into a shuffle buffer per worker.

    `skip_batches` (set by the DataModule on a mid-epoch resume) leaves out the first batches of the rank in the
    epoch the stream was made for: a resumed epoch neither replays nor loses samples (indexed shards skip them
    without reading; streamed ones read past them without decoding)."""

    def __init__(self, shards, decode, batch_size, *, samples_per_epoch: int = 0, shuffle_buffer: int = 512,
                 skip_batches: int = 0, **kwargs) -> None:
        super().__init__(shards, decode, batch_size, **kwargs)
        self.samples_per_epoch = samples_per_epoch or sum(s.samples for s in self.shards)
        self.shuffle_buffer = shuffle_buffer
        self.skip_batches = skip_batches

    def __len__(self) -> int:
        _, world = dist_context(self._rank, self._world)
        return math.ceil(self.samples_per_epoch / (world * self.batch_size))

    def batches_for_worker(self, worker: int, workers: int) -> int:
        steps = len(self)
        return steps // workers + (1 if worker < steps % workers else 0)

    def __iter__(self) -> Iterator[dict]:
        if not self.shards:
            raise ValueError("no training samples: the train split is empty")
        rank, world = dist_context(self._rank, self._world)
        worker, workers, _ = worker_context()
        # The epoch, not torch's worker seed: after a restart torch's seeds repeat the first run's. A persistent
        # worker keeps its copy of this stream across epochs, so epochs are counted from the one it was made at.
        self._start()
        epoch = self.epoch + self._calls
        skip = self.skip_batches if self._calls == 0 else 0
        self._calls += 1
        # DataLoader takes batches from worker 0, 1, ... in turn: after skipping `skip` batches, worker 0 must hold
        # batch `skip`, so each worker plays the part of worker (id + skip) mod num_workers of an unskipped epoch
        part = (worker + skip) % workers
        if self.readers is not None:
            yield from self._indexed_batches(epoch, rank, world, part, workers, skip)
        else:
            yield from self._streamed_batches(epoch, rank, part, workers, skip)

    def epoch_order(self, epoch: int, world: int) -> np.ndarray:
        """(len(self) x world x batch_size, 2) int64: (shard, sample) of every sample of the epoch over all ranks."""
        counts = np.array([len(r) for r in self.readers], dtype=np.int64)
        total, need = int(counts.sum()), len(self) * world * self.batch_size
        passes = [np.random.Generator(np.random.PCG64([self.seed, epoch, p])).permutation(total)
                  for p in range(-(-need // total))]
        ids = np.concatenate(passes)[:need]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        shard = np.searchsorted(starts, ids, side="right") - 1
        return np.stack([shard, ids - starts[shard]], axis=1)

    def _indexed_batches(self, epoch: int, rank: int, world: int, worker: int, workers: int,
                         skip: int) -> Iterator[dict]:
        mine = self.epoch_order(epoch, world)[rank::world]
        for b in range(len(self)):
            if b % workers != worker or b < skip:
                continue
            rng = random.Random(hash((self.seed, epoch, rank, b)))
            batch = []
            for shard, index in mine[b * self.batch_size:(b + 1) * self.batch_size]:
                sample = self._indexed_sample(int(shard), int(index), rng)
                tries = 0
                while sample is None and tries < 10:  # a bad sample: a stand-in drawn from the batch's rng
                    tries += 1
                    other = rng.randrange(len(self.readers))
                    sample = self._indexed_sample(other, rng.randrange(len(self.readers[other])), rng)
                if sample is None:
                    raise RuntimeError("no decodable training sample found (see the warnings above)")
                batch.append(sample)
            yield self._out(batch)

    def _indexed_sample(self, shard: int, index: int, rng: random.Random) -> Optional[dict]:
        # members are read as the decoder looks them up: a bad one is a decoding failure, named and counted there
        return self._decode_one(self.readers[shard].read(index, self.members), rng, True)

    def _streamed_batches(self, epoch: int, rank: int, worker: int, workers: int, skip: int) -> Iterator[dict]:
        order = random.Random(hash((self.seed, rank, worker, epoch)))
        wanted = self.batches_for_worker(worker, workers)
        skipped = len(range(worker, min(skip, len(self)), workers))  # this worker's share of the skipped batches
        weights = [s.samples for s in self.shards]

        def endless() -> Iterator[dict]:
            misses = 0
            while True:
                shard = order.choices(self.shards, weights=weights)[0]
                got = False
                for raw in iter_raw([shard.path], self.skips, self.members):
                    got = True
                    yield raw
                misses = 0 if got else misses + 1
                if misses > 10 * len(self.shards):
                    raise RuntimeError("no readable training sample in any shard (see the warnings above)")

        buffer: List[dict] = []
        batch: List[dict] = []
        produced = 0
        stream = endless()
        while produced < wanted:
            buffer.append(next(stream))
            if len(buffer) < self.shuffle_buffer:
                continue
            raw = buffer.pop(order.randrange(len(buffer)))
            if produced < skipped:  # raw samples are buffered and decoded only when used: skipping costs reads
                batch.append(raw)
            else:
                rng = random.Random(hash((self.seed, epoch, rank, worker, produced, len(batch))))
                sample = self._decode_one(raw, rng, True)
                if sample is None:
                    continue
                batch.append(sample)
            if len(batch) == self.batch_size:
                if produced >= skipped:
                    yield self._out(batch)
                produced, batch = produced + 1, []


class EvalStream(_Stream):
    """Every sample once per epoch over all ranks and workers, in a fixed order (see module doc)."""

    def __init__(self, shards, decode, batch_size, *, num_workers: int = 0, **kwargs) -> None:
        super().__init__(shards, decode, batch_size, **kwargs)
        self.num_workers = num_workers  # the DataLoader's, so that len() can count each worker's share

    def _raws(self, shards: Sequence[ShardInfo]) -> Iterator[dict]:
        """Raw samples of `shards` in file order: by their indexes (only the wanted members are read) or streamed."""
        if self.readers is None:
            yield from iter_raw([s.path for s in shards], self.skips, self.members)
            return
        readers = {r.path: r for r in self.readers}
        for shard in shards:
            reader = readers[shard.path]
            for i in range(len(reader)):
                yield reader.read(i, self.members)  # read lazily: a bad member fails (and is named) in decoding

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
        self._start()
        slot, slots = rank * workers + worker, world * workers
        shards, modulo = self._slot_samples(slot, slots)
        rng = random.Random(self.seed)
        raws = self._raws(shards)
        if modulo is not None:
            raws = (raw for i, raw in enumerate(raws) if i % slots == modulo)
        batch: List[dict] = []
        first = None
        for sample in self._decoded(raws, rng, False):
            batch.append(sample)
            if len(batch) == self.batch_size:
                first = first or batch
                yield self._out(batch)
                batch = []
        if batch:
            first = first or batch
            yield self._out(batch)
        padding = len(self) - self._rank_batches(rank, world) if world > 1 and worker == 0 else 0
        if padding > 0:
            if first is None:  # this rank read nothing: borrow the split's first sample
                first = list(self._decoded(self._raws(self.shards[:1]), rng, False))[:1]
            for _ in range(padding):
                yield self._out(first)
