"""The timing helpers every benchmark shares: what they count and what they leave out (warm-up), never how fast."""

import time

from recon3d.bench.timing import loader_rate, median_ms, repeat_loader, timed


def test_median_ms_is_the_median_in_milliseconds():
    assert median_ms([0.003, 0.001, 0.002]) == 2.0


def test_timed_leaves_the_warm_up_calls_out():
    calls = []
    times = timed(lambda: calls.append(time.perf_counter()), steps=3, warmup=2, cuda=False)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)


def test_loader_rate_takes_one_warm_up_batch_and_then_the_batches_it_counts():
    taken = []

    def batches():
        while True:
            taken.append(1)
            yield {}

    rate = loader_rate(batches, batches=4, batch_size=8, busy_s=0.001)
    assert len(taken) == 5 and 0 < rate < 8 / 0.001  # each batch cost at least the 1 ms of busy work


def test_repeat_loader_gives_the_same_batch_on_the_cpu():
    import torch

    batch = {"x": torch.arange(3)}
    seen = list(repeat_loader(batch, 3))
    assert len(seen) == 3 and all(torch.equal(b["x"], batch["x"]) for b in seen)
