"""SVRTask: single-view reconstruction by regressing the frozen autoencoder's code z from one image (MSE)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import lightning as L
import torch
import torch.nn.functional as F

from recon3d.config import Config
from recon3d.data.loading.latents import default_latents, read_all_latents
from recon3d.errors import ConfigError
from recon3d.models import networks
from recon3d.tasks.autoencoder import check_finite
from recon3d.tasks.checkpoints import CarriesAutoencoder, load_checkpoint, read_checkpoint
from recon3d.tasks.decoding import decode_occupancy
from recon3d.tasks.schedule import lr_scheduler
from recon3d.tasks.scores import CategoryScores, surface_scores, voxel_iou


class SVRTask(CarriesAutoencoder, L.LightningModule):
    """A ResNet image encoder trained to predict the autoencoder's z of the pictured shape.

    Targets come from exported latents (`recon3d export-latents`), looked up by sample key. Validation decodes the
    predicted z with the autoencoder's frozen decoder and measures the shape: val/iou (on val_resolution^3),
    val/chamfer (IM-NET convention x1000), val/fscore@1%, each also per category (val/iou/<category>), besides
    val/latent_mse. image_size, crop_size and holdout_views record how it was trained, for
    `recon3d reconstruct` and `recon3d eval-svr`.
    """

    def __init__(self, *, latent_dim: int = 256, image_channels: int = 1, architecture: str = "resnet18",
                 base_width: int = 64, lr: float = 1e-4, beta1: float = 0.5, beta2: float = 0.999,
                 lr_schedule: str = "constant", lr_final: float = 0.05, max_minutes: float = 0.0,
                 autoencoder_ckpt: str = "", latents: str = "", val_resolution: int = 32,
                 categories: Sequence[str] = (), image_size: int = 137, crop_size: int = 128,
                 holdout_views: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = networks.image_encoder(self.hparams)
        self._frozen: list = []  # the autoencoder's decoder, loaded in setup; a plain list keeps it out of this
        # task's state_dict, optimiser and DDP wrapping (it is not trained here)
        self._rows: Dict[str, int] = {}
        self.categories = list(categories)

    stage = "svr"
    compiled_modules = ("encoder",)  # train.compile

    @classmethod
    def from_config(cls, cfg: Config, manifest: dict) -> "SVRTask":
        """The image encoder of cfg.svr, sized to its autoencoder's z, for shards rendered as `manifest` says."""
        if not cfg.svr.autoencoder_ckpt:
            raise ConfigError("train.stage=svr needs svr.autoencoder_ckpt (the trained autoencoder)")
        ckpt = Path(cfg.svr.autoencoder_ckpt)
        if not ckpt.exists():  # a file, or a DeepSpeed folder (read through its consolidated file)
            raise ConfigError(f"svr.autoencoder_ckpt={str(ckpt)!r} does not exist")
        svr = cfg.svr
        return cls(latent_dim=int(read_checkpoint(ckpt)["hyper_parameters"]["latent_dim"]),
                   image_channels=1 if cfg.loader.grayscale else 3, architecture=svr.architecture,
                   base_width=svr.base_width, lr=svr.lr, beta1=svr.beta1, beta2=svr.beta2,
                   lr_schedule=svr.lr_schedule, lr_final=svr.lr_final, max_minutes=cfg.train.max_minutes,
                   autoencoder_ckpt=str(ckpt),
                   latents=default_latents(cfg.loader.shards, svr.autoencoder_ckpt, svr.latents),
                   val_resolution=cfg.train.val_resolution, image_size=int(manifest["config"]["render"]["image_size"]),
                   crop_size=cfg.loader.crop_size, holdout_views=cfg.loader.holdout_views)

    # --------------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        keys, codes = read_all_latents(self.hparams.latents)
        if codes.shape[1] != self.hparams.latent_dim:
            raise ValueError(f"latents have size {codes.shape[1]}, the image encoder predicts "
                             f"{self.hparams.latent_dim}: set svr.latent_dim to the autoencoder's")
        self._rows = {key: i for i, key in enumerate(keys)}
        self.register_buffer("codes", torch.as_tensor(codes), persistent=False)
        if self.hparams.autoencoder_ckpt and not self._frozen:
            decoder = load_checkpoint(self.hparams.autoencoder_ckpt, expect="autoencoder").model.decoder
            decoder.requires_grad_(False)
            self._frozen.append(decoder.eval())

    @property
    def decoder(self):
        return self._frozen[0] if self._frozen else None

    def targets(self, keys: List[str]) -> torch.Tensor:
        try:
            rows = [self._rows[k] for k in keys]
        except KeyError as err:
            raise KeyError(f"no latent code for sample {err.args[0]!r}: re-export the latents for these shards")
        return self.codes[torch.as_tensor(rows, device=self.codes.device)]

    # --------------------------------------------------------------------------------------------- steps
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.encoder.parameters(), lr=hp.lr, betas=(hp.beta1, hp.beta2))
        scheduler = lr_scheduler(optimizer, self, hp.lr_schedule, hp.lr_final, hp.max_minutes)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # losses in fp32: under DeepSpeed bf16 the prediction and the target can differ in dtype, which CUDA's
        # mse_loss backward refuses ("Found dtype BFloat16 but expected Float"; the CPU kernel accepts it)
        loss = F.mse_loss(self.encoder(batch["image"]).float(), self.targets(batch["key"]).float())
        check_finite(loss, self, f"epoch {self.current_epoch}", self.trainer.default_root_dir)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["key"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self.scores = CategoryScores()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        z = self.encoder(batch["image"])
        size = len(batch["key"])
        self.log("val/latent_mse", F.mse_loss(z.float(), self.targets(batch["key"]).float()), batch_size=size,
                 sync_dist=True)
        if self.decoder is None:
            return
        self.decoder.to(z.device)
        pred = decode_occupancy(self.decoder, z, self.hparams.val_resolution)
        chamfers, fscores = surface_scores(pred.float().cpu().numpy(), batch["surface_points"].float().cpu().numpy()) \
            if "surface_points" in batch else ([float("nan")] * size, [0.0] * size)
        self.scores.add(batch["key"], **{"iou": voxel_iou(pred, batch["voxels"]), "chamfer": torch.tensor(chamfers),
                                         "fscore@1%": torch.tensor(fscores)})

    def on_validation_epoch_end(self) -> None:
        if self.decoder is None or self.trainer.sanity_checking:
            return
        metrics = self.scores.summary("val")  # means over categories, over every rank's shapes
        if metrics:
            self.log_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in metrics.items()}, rank_zero_only=True)
