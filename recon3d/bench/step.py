"""`recon3d bench train-step`: the configured autoencoder's training step as a plain PyTorch loop and as recon3d's
Lightning task, side by side on the same batch (the framework's overhead on this machine)."""

from __future__ import annotations

import statistics

import lightning as L
import torch

from recon3d.bench.timing import repeat_loader, step_timer, timed
from recon3d.config import Config, to_dict
from recon3d.models.implicit_decoder import Autoencoder
from recon3d.tasks.autoencoder import AutoencoderTask


def bench_train_step(cfg: Config, batch_size: int, points: int, steps: int, warmup: int, device: str) -> str:
    """Forward+backward+Adam step of the configured autoencoder: a plain PyTorch loop vs our Lightning task."""
    res = cfg.geometry.voxel_resolution
    batch = {k: v.to(device) for k, v in random_batch(res, batch_size, points).items()}

    torch.manual_seed(0)
    model = Autoencoder(**to_dict(cfg.model), resolution=res).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(batch["voxels"], batch["points"]), batch["values"])
        loss.backward()
        opt.step()

    plain = statistics.median(timed(step, steps, warmup, device.startswith("cuda")))
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
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, max_steps=warmup + steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=repeat_loader(batch, warmup + steps))
    return statistics.median(timer.times)
