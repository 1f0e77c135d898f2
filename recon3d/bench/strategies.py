"""`recon3d bench train-step --strategy ddp,deepspeed_stage_2,deepspeed_stage_3`: the same autoencoder step under
each strategy, each in a fresh process group of `--devices` ranks, so that peak memory is the strategy's own.

The parent process starts one `recon3d bench train-step` per strategy with `--rank-stats DIR`; each of its ranks
times the steps after warm-up, writes a checkpoint (a file, or DeepSpeed's folder of shards) and its own figures to
DIR/rank<N>.json; the parent prints one row per strategy.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import lightning as L
import torch

from recon3d.bench.step import bench_task, random_batch
from recon3d.bench.timing import repeat_loader, step_timer
from recon3d.config import Config, to_dict
from recon3d.training.build import build_strategy, resolve_precision


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_strategies(cfg: Config, strategies: Sequence[str], devices: int, batch_size: int, points: int, steps: int,
                     warmup: int, device: str) -> str:
    """One row per strategy: median step ms, samples/s over all ranks, peak memory per rank, checkpoint MiB."""
    lines = [f"strategy benchmark on {device}: {devices} rank(s), batch {batch_size} x {points} points per rank, "
             f"voxels {cfg.geometry.voxel_resolution}^3, latent {cfg.model.latent_dim}, decoder "
             f"{list(cfg.model.decoder_widths)}, precision {cfg.train.precision}; median of {steps} after {warmup}",
             f"  {'strategy':<20} {'step ms':>9} {'samples/s':>10} {'peak MiB/rank':>14} {'checkpoint MiB':>15}"]
    with tempfile.TemporaryDirectory(prefix="recon3d-bench-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(json.dumps(to_dict(cfg)))  # JSON is YAML: the resolved config, for every rank
        for strategy in strategies:
            out = Path(tmp) / strategy
            cmd = [sys.executable, "-m", "recon3d", "bench", "train-step", "-c", str(config), "--strategy", strategy,
                   "--devices", str(devices), "--batch-size", str(batch_size), "--points", str(points),
                   "--batches", str(steps), "--warmup", str(warmup), "--device", device, "--rank-stats", str(out)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
            if done.returncode or len(ranks) != devices:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                lines.append(f"  {strategy:<20} failed (exit {done.returncode}): {tail[0][:160]}")
                continue
            step = max(r["step_s"] for r in ranks)  # the slowest rank sets the pace
            lines.append(f"  {strategy:<20} {step * 1000:9.1f} {devices * batch_size / step:10.1f} "
                         f"{max(r['peak_mib'] for r in ranks):14.0f} {ranks[0]['checkpoint_bytes'] / 2**20:15.2f}")
    return "\n".join(lines)


def rank_stats(cfg: Config, strategy: str, devices: int, batch_size: int, points: int, steps: int, warmup: int,
               device: str, out_dir: str) -> None:
    """One rank's part of bench_strategies: train `warmup + steps` steps under `strategy`, save a checkpoint, write
    out_dir/rank<N>.json (step seconds, peak memory, checkpoint bytes)."""
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, strategy=strategy, devices=devices,
                                                             accelerator=accelerator))
    loader = repeat_loader(random_batch(cfg.geometry.voxel_resolution, batch_size, points), warmup + steps)
    timer = step_timer(accelerator == "gpu", warmup)
    torch.manual_seed(0)
    task = bench_task(cfg)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=build_strategy(cfg),
                        precision=resolve_precision(cfg.train), max_steps=warmup + steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=loader)
    ckpt = Path(out_dir) / "checkpoint.ckpt"
    trainer.save_checkpoint(ckpt)
    trainer.strategy.barrier()
    peak = (torch.cuda.max_memory_allocated() if accelerator == "gpu" else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(
        {"step_s": statistics.median(timer.times), "peak_mib": peak, "checkpoint_bytes": _size(ckpt)}))

