"""`recon3d bench train-step` without a strategy: the plain loop and the Lightning task on one batch, each timed
after its warm-up; what it prints, never how fast."""

import re

from recon3d.bench.step import bench_train_step
from recon3d.config import load_config
from tests.conftest import TINY


def test_train_step_prints_the_plain_loop_beside_the_task_with_their_ratio():
    text = bench_train_step(load_config([TINY]), batch_size=2, points=64, steps=2, warmup=1, device="cpu")
    lines = text.splitlines()
    assert lines[0].startswith("train-step benchmark on cpu: batch 2 x 64 points") and "median of 2 after 1" in lines[0]
    plain = re.search(r"plain PyTorch loop:\s+([\d.]+) ms/step", lines[1])
    task = re.search(r"AutoencoderTask:\s+([\d.]+) ms/step.*ratio to plain: ([\d.]+)", lines[2])
    assert plain and task
    ratio, task_ms, plain_ms = float(task.group(2)), float(task.group(1)), float(plain.group(1))
    assert plain_ms > 0 and abs(ratio - task_ms / plain_ms) < 0.01 + 0.02 * ratio  # the printed ms are rounded


def test_train_step_with_compile_adds_both_compiled_steps():
    text = bench_train_step(load_config([TINY]), batch_size=2, points=64, steps=1, warmup=1, device="cpu",
                            compiled=True)
    names = [line.split(":")[0].strip() for line in text.splitlines()[1:]]
    assert names == ["plain PyTorch loop", "AutoencoderTask", "plain loop, compiled", "AutoencoderTask, compiled"]
    assert all("ratio to plain" in line for line in text.splitlines()[2:])
