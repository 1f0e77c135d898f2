"""LatentGANTask: IM-NET's latent GAN, a WGAN-GP on the autoencoder's codes z, trained with manual optimisation."""

from __future__ import annotations

import copy
from typing import List, Optional, Sequence

import lightning as L
import numpy as np
import torch

from recon3d.config import Config
from recon3d.data.loading.datamodule import iter_split
from recon3d.data.loading.latents import default_latents, latent_size
from recon3d.data.loading.shards import first_split
from recon3d.errors import ConfigError
from recon3d.geometry.metrics import coverage_and_mmd, pairwise_chamfer_l2
from recon3d.geometry.render import render_preview
from recon3d.models import networks
from recon3d.models.latent_gan import LatentGenerator, gradient_penalty
from recon3d.tasks.autoencoder import check_finite
from recon3d.tasks.checkpoints import CarriesAutoencoder, load_checkpoint
from recon3d.tasks.decoding import decoded_surfaces, inference_dtype
from recon3d.tasks.pictures import publish_image


def reference_split(name: str, manifest: dict) -> str:
    """gan.reference_split as a split: itself, or for "auto" the first of val, test and train that holds shapes
    (small shard sets may leave val or test empty)."""
    if name != "auto":
        return name
    return first_split(manifest, ("val", "test", "train")) or "val"


class LatentGANTask(CarriesAutoencoder, L.LightningModule):
    """A generator noise -> z and a critic z -> score, trained as WGAN-GP: n_critic critic updates (Wasserstein loss +
    gp_weight x gradient penalty) per generator update; Adam for both.

    With ema_decay > 0 the shapes come from `generator_ema`, an exponential moving average of the generator's weights
    (updated after each generator step, its decay ramped as min(ema_decay, (1 + n) / (10 + n)) after n updates so
    that a short run does not average in its first random weights): averaging damps the step-to-step wandering of GAN
    weights (Yazici et al. 2019). 0 samples from the trained generator itself.

    Logs train/critic_loss, train/generator_loss, train/gp, train/wasserstein (critic(real) - critic(fake), the
    critic's estimate of the distance), val/wasserstein on held-out codes (of the trained generator) and, each
    validation, val/cov and val/mmd: coverage and minimum matching distance (IM-NET's Chamfer-L2, x1000) between
    `eval_samples` generated shapes (decoded by the frozen autoencoder, meshed at eval_resolution^3) and the shapes of
    `reference_split`.
    """

    def __init__(self, *, latent_dim: int = 256, noise_dim: int = 128, generator_widths: Sequence[int] = (2048, 2048),
                 critic_widths: Sequence[int] = (2048, 2048), n_critic: int = 5, gp_weight: float = 10.0,
                 lr: float = 1e-4, beta1: float = 0.5, beta2: float = 0.9, autoencoder_ckpt: str = "",
                 shards: str = "", reference_split: str = "val", reference_shapes: int = 100, eval_samples: int = 64,
                 eval_points: int = 1024, eval_resolution: int = 32, samples_to_log: int = 8,
                 run_dir: str = "", ema_decay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = networks.generator(self.hparams)
        self.critic = networks.critic(self.hparams)
        self.generator_ema: Optional[LatentGenerator] = None
        if ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._frozen: list = []  # the autoencoder's decoder (not trained, kept out of the state_dict)
        self._references: Optional[np.ndarray] = None

    stage = "gan"
    # train.compile: the generator only; the critic's gradient penalty differentiates twice, which torch.compile
    # does not support
    compiled_modules = ("generator",)

    @classmethod
    def from_config(cls, cfg: Config, manifest: dict) -> "LatentGANTask":
        """The GAN of cfg.gan on the codes exported from gan.autoencoder_ckpt (their size checked against
        model.latent_dim), with COV/MMD against the reference split of the shards described by `manifest`.

        Raises:
            ConfigError: the latents' size differs from model.latent_dim, the reference split is empty, or the
                shards have no surface samples.
        """
        latent_dim = latent_size(default_latents(cfg.loader.shards, cfg.gan.autoencoder_ckpt, cfg.gan.latents))
        if latent_dim and latent_dim != cfg.model.latent_dim:
            raise ConfigError(f"the latents have z of size {latent_dim} but model.latent_dim={cfg.model.latent_dim}: "
                              f"set model.latent_dim={latent_dim} (the autoencoder's) so the generator matches it")
        split = reference_split(cfg.gan.reference_split, manifest)
        if manifest["splits"].get(split, {}).get("samples", 0) == 0:
            raise ConfigError(f"gan.reference_split={split}: {cfg.loader.shards} has no {split} shapes for "
                              f"COV/MMD; choose another split")
        if not manifest["config"]["geometry"].get("surface_points"):
            raise ConfigError(f"{cfg.loader.shards} stores no surface samples (geometry.surface_points=0): "
                              f"COV/MMD need them; rebuild the shards")
        gan = cfg.gan
        names = ("noise_dim", "generator_widths", "critic_widths", "n_critic", "gp_weight", "lr", "beta1", "beta2",
                 "autoencoder_ckpt", "reference_shapes", "eval_samples", "eval_points", "ema_decay")
        return cls(**{k: getattr(gan, k) for k in names}, reference_split=split, latent_dim=cfg.model.latent_dim,
                   shards=cfg.loader.shards,
                   eval_resolution=cfg.train.val_resolution, samples_to_log=cfg.train.reconstructions_to_log,
                   run_dir=cfg.train.run_dir)

    def configure_optimizers(self):
        betas = (self.hparams.beta1, self.hparams.beta2)
        return [torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
                torch.optim.Adam(self.critic.parameters(), lr=self.hparams.lr, betas=betas)]

    def noise(self, count: int) -> torch.Tensor:
        return torch.randn(count, self.hparams.noise_dim, device=self.device)

    @property
    def sampler(self) -> LatentGenerator:
        """The generator that makes shapes: the weight average when the task keeps one, else the trained one."""
        return self.generator if self.generator_ema is None else self.generator_ema

    def codes_for_seeds(self, seeds: Sequence[int]) -> torch.Tensor:
        """One generated code (len(seeds), Z) per noise seed: the same seed gives the same shape, on any device."""
        return self.sampler.codes_for_seeds(seeds)

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the weight average towards the generator: ema += (1 - decay) (generator - ema)."""
        self.ema_updates += 1
        n = self.ema_updates.float()  # on the device: no host sync per step
        decay = ((1 + n) / (10 + n)).clamp(max=self.hparams.ema_decay)
        for average, current in zip(self.generator_ema.parameters(), self.generator.parameters()):
            average.lerp_(current, (1 - decay).to(average.dtype))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint saved without a weight average (gan.ema_decay=0, or before it existed) resumes with one that
        starts from its generator."""
        state = checkpoint["state_dict"]
        if self.generator_ema is not None and "ema_updates" not in state:
            state.update({f"generator_ema.{k[len('generator.'):]}": v.clone() for k, v in list(state.items())
                          if k.startswith("generator.")})
            state["ema_updates"] = torch.zeros((), dtype=torch.long)

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
            if self.generator_ema is not None:
                self.update_ema()
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
            decoder = load_checkpoint(self.hparams.autoencoder_ckpt, expect="autoencoder").model.decoder
            decoder.requires_grad_(False)
            self._frozen.append(decoder.eval())
        return self._frozen[0].to(self.device)

    def references(self) -> np.ndarray:
        """(R, eval_points, 3) stored surface samples of the reference split's shapes (read once)."""
        if self._references is None:
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
    def set_metrics(self) -> dict:
        """COV and MMD (Chamfer-L2 x1000) of generated shapes, from fixed noise so that epochs are comparable,
        against the reference shapes; empty meshes cannot match a reference and are counted in val/empty_samples.
        Decoded as the test evaluation decodes (bf16 where native, values near 0.5 again in fp32): this hook runs
        outside Lightning's autocast, and in fp32 the decoding took over a third of the demo's GAN stage
        (docs/results.md, latent GAN)."""
        z = self.codes_for_seeds(range(self.hparams.eval_samples))
        meshes, clouds = decoded_surfaces(self.decoder, z, self.hparams.eval_resolution, self.hparams.eval_points,
                                          np.random.default_rng(0), inference_dtype(self.device))
        self._publish_samples(meshes)
        full = [c for c in clouds if c is not None]
        empty = 1 - len(full) / len(meshes)
        if not full:
            return {"cov": 0.0, "mmd": float("nan"), "empty_samples": empty}
        scores = coverage_and_mmd(1000.0 * pairwise_chamfer_l2(full, list(self.references())))
        return {**scores, "empty_samples": empty}

    def _publish_samples(self, meshes: list) -> None:
        shown = meshes[:self.hparams.samples_to_log]
        if not shown:
            return
        row = np.concatenate([render_preview(v, f, 96) for v, f in shown], axis=1)
        publish_image(self, row, shown)
