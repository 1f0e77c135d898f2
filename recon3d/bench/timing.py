"""Timing helpers every benchmark shares (the `recon3d bench` verbs and benchmarks/gpu_proof.py): step times of a
Lightning run, of a plain function and of a loader, synchronised on CUDA so that a time is the device's, not the
launch's. Figures are medians printed by the benchmarks; nothing here asserts a time."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterator, List, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset


def median_ms(times: Sequence[float]) -> float:
    """The median of `times` (seconds) in milliseconds, rounded to the microsecond."""
    return round(statistics.median(times) * 1000, 3)


def timed(fn: Callable[[], object], steps: int, warmup: int, cuda: bool) -> List[float]:
    """Seconds of each of `steps` calls of fn() after `warmup` untimed ones (each call synchronised on CUDA)."""
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def loader_rate(batches_of: Callable[[], Iterator[dict]], batches: int, batch_size: int, busy_s: float) -> float:
    """Samples/s of a fresh iterator of batches_of() over `batches` batches after one warm-up batch; with busy_s the
    main process computes that long per batch (one thread) before taking the next, as a training step would."""
    iterator = batches_of()
    next(iterator)  # warm-up: worker start, first reads
    a, b = torch.randn(192, 192), torch.randn(192, 192)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
            until = time.perf_counter() + busy_s
            while time.perf_counter() < until:
                a @ b
        return batches * batch_size / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def repeat_loader(batch: dict, count: int):
    """A loader yielding the same CPU batch `count` times (each rank its own copy)."""
    class Repeat(IterableDataset):
        def __iter__(self):
            for _ in range(count):
                yield {k: v.cpu() for k, v in batch.items()}

    return DataLoader(Repeat(), batch_size=None)


def step_timer(cuda: bool, warmup: int):
    """A callback keeping the seconds of every training step after the first `warmup` (synchronised on CUDA)."""
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
