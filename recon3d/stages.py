"""The stage table: one row per trained model, and the one place that says what a stage is.

Training, sweeps, reports, evaluation, checkpoint loading and the CLI look a stage up here instead of naming the
stages again. Adding a model (say an Occupancy Network) is one row below plus a task module with a LightningModule
that has `from_config(cfg, manifest)` (and, for `recon3d eval`, an inference module with `evaluate`).

This module imports nothing from recon3d: the config schema checks stage names against it, and the task and
inference modules are named, not imported, so that `import recon3d.config` stays light. `task_class()` and
`inference_module()` import them when a caller needs them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, Tuple

Curves = Tuple[Tuple[str, Tuple[str, ...]], ...]  # (plot title, metrics on it), one per plot of the report


@dataclass(frozen=True)
class Stage:
    name: str  # the value of train.stage
    title: str  # how the report names it
    loader: str  # the shard loader pipeline it reads (loader.stage); "" for the GAN, which reads exported latents
    task: str  # "module:Class" of its LightningModule
    inference: str  # module with evaluate(ckpt, shards, ...) -> per-category summary, and TABLE_COLUMNS
    epochs: Callable[[object], int]  # its Trainer's max_epochs from a Config
    best_by: str  # the validation metric that picks the best checkpoint (and a sweep's default metric)
    mode: str  # min | max, for best_by
    curves: Curves  # the report's plots
    pictures: str  # folder under the run folder where the task saves a picture per validation
    deepspeed: bool  # whether Lightning's DeepSpeed strategy can train it (one optimiser)
    picture_caption: str = ""
    ddp_unused_parameters: bool = False  # some parameters get no gradient in some steps (DDP must not wait for them)
    reload_loaders: Callable[[object], bool] = lambda cfg: False  # remake the loaders every epoch (from a Config)
    hands_on: str = "best"  # what a finished run hands on: "best" (by best_by; best-*.ckpt is kept either way) | "last"

    def task_class(self) -> type:
        module, name = self.task.split(":")
        return getattr(importlib.import_module(module), name)

    def inference_module(self) -> ModuleType:
        return importlib.import_module(self.inference)


STAGES: Dict[str, Stage] = {stage.name: stage for stage in (
    Stage("autoencoder", "Autoencoder (voxels -> z -> implicit field)", "autoencoder",
          "recon3d.tasks.autoencoder:AutoencoderTask", "recon3d.inference.autoencoder",
          lambda cfg: sum(cfg.train.phase_epochs), "val/iou", "max",
          (("training loss (MSE)", ("train/loss",)), ("validation IoU", ("val/iou",)),
           ("validation Chamfer-L2 x1000", ("val/chamfer",))),
          "reconstructions", True, "left: input voxels, right: reconstruction",
          # progressive training switches point sets between phases: the loaders are remade every epoch
          reload_loaders=lambda cfg: len(set(cfg.train.point_resolutions)) > 1),
    Stage("svr", "Single-view reconstruction (image -> z)", "image", "recon3d.tasks.svr:SVRTask",
          "recon3d.inference.svr", lambda cfg: cfg.svr.epochs, "val/iou", "max",
          (("training loss (latent MSE)", ("train/loss",)), ("validation IoU", ("val/iou",)),
           ("validation latent MSE", ("val/latent_mse",))),
          "", True),
    Stage("gan", "Latent GAN (noise -> z)", "", "recon3d.tasks.gan:LatentGANTask", "recon3d.inference.latent",
          lambda cfg: cfg.gan.epochs, "val/mmd", "min",
          (("losses", ("train/critic_loss", "train/generator_loss")),
           ("Wasserstein estimate", ("train/wasserstein", "val/wasserstein")),
           ("MMD (Chamfer-L2 x1000)", ("val/mmd",)), ("coverage", ("val/cov",))),
          "samples", False, "generated shapes (fixed noise)",
          ddp_unused_parameters=True,  # the critic's update leaves the generator idle
          # its shapes come from a weight average of the generator, and val/mmd of a few dozen samples is too noisy
          # to choose among its checkpoints: in the demo's GAN (12 runs on 4 autoencoders) the last checkpoints
          # scored test COV 0.70-0.81 (mean 0.74), the val/mmd ones 0.69-0.75 (mean 0.73; two with empty samples)
          hands_on="last"),
    Stage("vrn", "Volumetric regression (image -> view-aligned volume, VRN)", "volume", "recon3d.tasks.vrn:VRNTask",
          "recon3d.inference.vrn", lambda cfg: cfg.vrn.epochs, "val/iou", "max",
          (("training loss (weighted cross-entropy)", ("train/loss",)), ("validation IoU", ("val/iou",)),
           ("validation loss", ("val/loss",))),
          "volumes", True, "input | true depth | predicted depth"),
    Stage("stereo", "Stereo view synthesis (left -> right view, Deep3D)", "stereo", "recon3d.tasks.stereo:StereoTask",
          "recon3d.inference.stereo", lambda cfg: cfg.stereo.epochs, "val/mae", "min",
          (("training loss (L1)", ("train/loss",)), ("validation MAE (0-255)", ("val/mae", "val/mae_copy",
                                                                               "val/mae_shift"))),
          "stereo", True, "left | predicted right | true right | disparity"),
)}


def stage(name: str) -> Stage:
    """The row of `name`.

    Raises:
        ValueError: no such stage (the message lists the stages).
    """
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}: one of {', '.join(STAGES)}") from None
