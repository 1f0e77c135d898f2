"""LatentGANTask: IM-NET's latent GAN, a WGAN-GP on the autoencoder's codes z, trained with manual optimisation."""

from __future__ import annotations

from typing import List, Optional, Sequence

import lightning as L
import numpy as np
import torch

from recon3d.geometry.extract import grid_to_mesh
from recon3d.geometry.metrics import coverage_and_mmd, pairwise_chamfer_l2, sample_surface
from recon3d.models.latent_gan import LatentCritic, LatentGenerator, gradient_penalty
from recon3d.tasks.autoencoder import check_finite
from recon3d.tasks.shape_eval import decode_occupancy, publish_image


class LatentGANTask(L.LightningModule):
    """A generator noise -> z and a critic z -> score, trained as WGAN-GP: n_critic critic updates (Wasserstein loss +
    gp_weight x gradient penalty) per generator update; Adam for both.

    Logs train/critic_loss, train/generator_loss, train/gp, train/wasserstein (critic(real) - critic(fake), the
    critic's estimate of the distance), val/wasserstein on held-out codes and, each validation, val/cov and val/mmd:
    coverage and minimum matching distance (IM-NET's Chamfer-L2, x1000) between `eval_samples` generated shapes
    (decoded by the frozen autoencoder, meshed at eval_resolution^3) and the shapes of `reference_split`.
    """

    def __init__(self, *, latent_dim: int = 256, noise_dim: int = 128, generator_widths: Sequence[int] = (2048, 2048),
                 critic_widths: Sequence[int] = (2048, 2048), n_critic: int = 5, gp_weight: float = 10.0,
                 lr: float = 1e-4, beta1: float = 0.5, beta2: float = 0.9, autoencoder_ckpt: str = "",
                 shards: str = "", reference_split: str = "val", reference_shapes: int = 100, eval_samples: int = 64,
                 eval_points: int = 1024, eval_resolution: int = 32, samples_to_log: int = 8,
                 run_dir: str = "") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = LatentGenerator(noise_dim=noise_dim, latent_dim=latent_dim, widths=generator_widths)
        self.critic = LatentCritic(latent_dim=latent_dim, widths=critic_widths)
        self._frozen: list = []  # the autoencoder's decoder (not trained, kept out of the state_dict)
        self._references: Optional[np.ndarray] = None

    def configure_optimizers(self):
        betas = (self.hparams.beta1, self.hparams.beta2)
        return [torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
                torch.optim.Adam(self.critic.parameters(), lr=self.hparams.lr, betas=betas)]

    def noise(self, count: int) -> torch.Tensor:
        return torch.randn(count, self.hparams.noise_dim, device=self.device)

    # ------------------------------------------------------------------------------------------- training
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        real = batch
        with torch.no_grad():
            fake = self.generator(self.noise(len(real)))
        wasserstein = self.critic(real).mean() - self.critic(fake).mean()
        penalty = gradient_penalty(self.critic, real, fake)
        critic_loss = -wasserstein + self.hparams.gp_weight * penalty
        check_finite(critic_loss, self, f"epoch {self.current_epoch}, critic", self.hparams.run_dir)
        opt_d.zero_grad()
        self.manual_backward(critic_loss)
        opt_d.step()
        size = len(real)
        self.log_dict({"train/critic_loss": critic_loss, "train/gp": penalty, "train/wasserstein": wasserstein},
                      prog_bar=False, batch_size=size)
        if (batch_idx + 1) % self.hparams.n_critic == 0:
            generator_loss = -self.critic(self.generator(self.noise(size))).mean()
            check_finite(generator_loss, self, f"epoch {self.current_epoch}, generator", self.hparams.run_dir)
            opt_g.zero_grad()
            self.manual_backward(generator_loss)
            opt_g.step()
            self.log("train/generator_loss", generator_loss, prog_bar=True, batch_size=size)

    # ------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        fake = self.generator(self.noise(len(batch)))
        self.log("val/wasserstein", self.critic(batch).mean() - self.critic(fake).mean(), batch_size=len(batch),
                 sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.hparams.autoencoder_ckpt:
            return
        # the set metrics need every sample and every reference at once: rank 0 computes them, all ranks log them
        metrics = self.set_metrics() if self.trainer.is_global_zero else None
        metrics = self.trainer.strategy.broadcast(metrics, src=0)
        self.log_dict({f"val/{k}": float(v) for k, v in metrics.items()}, rank_zero_only=False)

    @property
    def decoder(self):
        if not self._frozen:
            from recon3d.engine.inference import load_task

            decoder = load_task(self.hparams.autoencoder_ckpt, "cpu").model.decoder.requires_grad_(False)
            self._frozen.append(decoder.eval())
        return self._frozen[0].to(self.device)

    def references(self) -> np.ndarray:
        """(R, eval_points, 3) stored surface samples of the reference split's shapes (read once)."""
        if self._references is None:
            from recon3d.engine.inference import iter_split

            rng = np.random.default_rng(0)
            found: List[np.ndarray] = []
            for batch in iter_split(self.hparams.shards, self.hparams.reference_split, 8, surface=True):
                for surface in batch["surface_points"].numpy():
                    found.append(surface[rng.choice(len(surface), self.hparams.eval_points,
                                                    replace=len(surface) < self.hparams.eval_points)])
                if len(found) >= self.hparams.reference_shapes:
                    break
            if not found:
                raise ValueError(f"{self.hparams.shards}: no shapes with surface samples in split "
                                 f"{self.hparams.reference_split!r} for COV/MMD")
            self._references = np.stack(found[:self.hparams.reference_shapes])
        return self._references

    @torch.no_grad()
    def sample_meshes(self, count: int, seed: int = 0) -> list:
        """(vertices, faces) of `count` generated shapes, from fixed noise so that epochs are comparable."""
        noise = torch.randn(count, self.hparams.noise_dim, generator=torch.Generator().manual_seed(seed))
        z = self.generator(noise.to(self.device))
        grids = decode_occupancy(self.decoder, z, self.hparams.eval_resolution).float().cpu().numpy()
        return [grid_to_mesh(grid, 0.5, corners=False) for grid in grids]

    def set_metrics(self) -> dict:
        """COV and MMD (Chamfer-L2 x1000) of generated shapes against the reference shapes; empty meshes cannot
        match a reference and are counted in val/empty_samples."""
        meshes = self.sample_meshes(self.hparams.eval_samples)
        rng = np.random.default_rng(0)
        clouds = [sample_surface(v, f, self.hparams.eval_points, rng)[0] for v, f in meshes if len(f)]
        self._publish_samples(meshes)
        empty = 1 - len(clouds) / len(meshes)
        if not clouds:
            return {"cov": 0.0, "mmd": float("nan"), "empty_samples": empty}
        scores = coverage_and_mmd(1000.0 * pairwise_chamfer_l2(clouds, list(self.references())))
        return {**scores, "empty_samples": empty}

    def _publish_samples(self, meshes: list) -> None:
        from recon3d.geometry.render import render_preview

        shown = meshes[:self.hparams.samples_to_log]
        if not shown:
            return
        row = np.concatenate([render_preview(v, f, 96) for v, f in shown], axis=1)
        publish_image(self, "samples", row, "generated shapes (fixed noise)")
