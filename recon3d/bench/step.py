"""`recon3d bench train-step`: the configured autoencoder's training step as a plain PyTorch loop and as recon3d's
Lightning task, side by side on the same batch (the framework's overhead on this machine)."""

from __future__ import annotations

import statistics

import lightning as L
import torch

from recon3d.bench.timing import repeat_loader, step_timer, timed
from recon3d.config import Config, to_dict, with_overrides
from recon3d.models.implicit_decoder import Autoencoder
from recon3d.tasks.autoencoder import AutoencoderTask
from recon3d.training.build import compile_task


def bench_train_step(cfg: Config, batch_size: int, points: int, steps: int, warmup: int, device: str,
                     compiled: bool = False) -> str:
    """Forward+backward+Adam step of the configured autoencoder: a plain PyTorch loop vs our Lightning task, and
    with `compiled` both again under torch.compile (the task through train.compile=on), all in one process."""
    res = cfg.geometry.voxel_resolution
    batch = {k: v.to(device) for k, v in random_batch(res, batch_size, points).items()}
    rows = {"plain PyTorch loop": _plain_step_time(cfg, batch, steps, warmup, device, False),
            "AutoencoderTask": _lightning_step_time(cfg, batch, steps, warmup, device)}
    if compiled:
        rows["plain loop, compiled"] = _plain_step_time(cfg, batch, steps, warmup, device, True)
        rows["AutoencoderTask, compiled"] = _lightning_step_time(with_overrides(cfg, ["train.compile=on"]), batch,
                                                                 steps, warmup, device)
    per_step, plain = batch_size * points, rows["plain PyTorch loop"]
    lines = [f"train-step benchmark on {device}: batch {batch_size} x {points} points, voxels {res}^3, latent "
             f"{cfg.model.latent_dim}, decoder {list(cfg.model.decoder_widths)}; median of {steps} after {warmup}"]
    for name, seconds in rows.items():
        ratio = "" if seconds is plain else f"  (ratio to plain: {seconds / plain:.3f})"
        lines.append(f"  {name + ':':<27} {seconds * 1000:8.1f} ms/step  {per_step / seconds:12.0f} points/s{ratio}")
    return "\n".join(lines)


def _plain_step_time(cfg: Config, batch: dict, steps: int, warmup: int, device: str, compiled: bool) -> float:
    torch.manual_seed(0)
    model = Autoencoder(**to_dict(cfg.model), resolution=cfg.geometry.voxel_resolution).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(forward(batch["voxels"], batch["points"]), batch["values"])
        loss.backward()
        opt.step()

    return statistics.median(timed(step, steps, warmup, device.startswith("cuda")))


def random_batch(resolution: int, batch_size: int, points: int) -> dict:
    """A fixed random autoencoder batch on the CPU (seeded): voxels, points in the unit cube, occupancy values."""
    gen = torch.Generator().manual_seed(0)
    return {"voxels": (torch.rand(batch_size, 1, resolution, resolution, resolution, generator=gen) > 0.7).float(),
            "points": torch.rand(batch_size, points, 3, generator=gen) - 0.5,
            "values": (torch.rand(batch_size, points, 1, generator=gen) > 0.5).float()}


def bench_task(cfg: Config):
    """The configured AutoencoderTask for the bench's own batches (no shards: no stored point sets to check)."""
    manifest = {"source": {"kind": "imnet_hdf5"},
                "config": {"geometry": {"point_resolutions": [], "voxel_resolution": cfg.geometry.voxel_resolution}}}
    return AutoencoderTask.from_config(cfg, manifest)


def _lightning_step_time(cfg: Config, batch: dict, steps: int, warmup: int, device: str) -> float:
    cuda = device.startswith("cuda")
    timer = step_timer(cuda, warmup)
    torch.manual_seed(0)
    task = bench_task(cfg)
    compile_task(cfg, task)
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, max_steps=warmup + steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=repeat_loader(batch, warmup + steps))
    return statistics.median(timer.times)
