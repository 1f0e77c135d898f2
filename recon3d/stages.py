"""The stage table: one row per trained model, and the one place that says what a stage is.

Training, sweeps, the demo, the SLURM chain, reports, evaluation, checkpoint loading and the CLI look a stage up here
instead of naming the stages again. Adding a model (say an Occupancy Network) is one row below (or `register_stage`
from your own package) plus a task module whose LightningModule sets `stage` and has `from_config(cfg, manifest)`,
and an inference module that satisfies `recon3d.inference.protocol.StageInference` (evaluate, write_sheets, the
table's columns). Nothing else names a stage.

This module imports nothing from recon3d: the config schema checks stage names against it, and the task, data and
inference modules are named, not imported, so that `import recon3d.config` stays light (`task_class()`,
`datamodule_class()` and `inference_module()` import them when a caller needs them).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

Curves = Tuple[Tuple[str, Tuple[str, ...]], ...]  # (plot title, metrics on it), one per plot of the report
SHARD_LOADER = "recon3d.data.loading.datamodule:ShardDataModule"


def _nothing(cfg: Any) -> Dict[str, Any]:
    return {}


def _never(cfg: Any) -> bool:
    return False


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    name: str  # the value of train.stage
    title: str  # how the report names it
    loader: str  # the shard loader pipeline it reads (loader.stage); "" when its DataModule reads something else
    task: str  # "module:Class" of its LightningModule (with from_config(cfg, manifest))
    inference: str  # module satisfying recon3d.inference.protocol.StageInference
    epochs: Callable[[Any], int]  # its Trainer's max_epochs from a Config
    best_by: str  # the validation metric that picks the best checkpoint (and a sweep's default metric)
    mode: str  # min | max, for best_by
    curves: Curves  # the report's plots
    pictures: str  # folder under the run folder where the task saves a picture per validation ("" for none)
    deepspeed: bool  # whether Lightning's DeepSpeed strategy can train it (one optimiser)
    picture_caption: str = ""
    ddp_unused_parameters: bool = False  # some parameters get no gradient in some steps (DDP must not wait for them)
    reload_loaders: Callable[[Any], bool] = _never  # remake the loaders every epoch (from a Config)
    hands_on: str = "best"  # what a finished run hands on: "best" (by best_by; best-*.ckpt is kept either way) | "last"
    datamodule: str = SHARD_LOADER  # "module:Class" of its LightningDataModule (with from_config(cfg))
    exports_latents: bool = False  # `recon3d export-latents` takes its checkpoints: its codes of every shape
    learns_from: str = ""  # config section (svr, gan) whose autoencoder_ckpt and latents name the autoencoder whose
    # exported codes this stage learns; "" when it trains on the shards alone
    demo_share: float = 0.0  # its default share of the demo's time budget (demo.shares)
    demo_overrides: Tuple[str, ...] = ()  # key=value settings of its training in the demo (${demo.x} interpolates)
    demo_eval: Callable[[Any], Dict[str, Any]] = _nothing  # keywords of its evaluate() in the demo, from the Config
    demo_sheets: Callable[[Any], Dict[str, Any]] = _nothing  # keywords of its write_sheets() in the demo
    mesh_folders: Tuple[Tuple[str, str], ...] = ()  # (title, folder of the evaluation) the report shows in 3D

    def task_class(self) -> type:
        return _load(self.task)

    def datamodule_class(self) -> type:
        return _load(self.datamodule)

    def inference_module(self) -> ModuleType:
        return importlib.import_module(self.inference)

    def mesh_folder(self, title: str) -> str:
        """The evaluation subfolder of the meshes the report shows under `title`."""
        return dict(self.mesh_folders)[title]


STAGES: Dict[str, Stage] = {stage.name: stage for stage in (
    Stage("autoencoder", "Autoencoder (voxels -> z -> implicit field)", "autoencoder",
          "recon3d.tasks.autoencoder:AutoencoderTask", "recon3d.inference.autoencoder",
          lambda cfg: sum(cfg.train.phase_epochs), "val/iou", "max",
          (("training loss (MSE)", ("train/loss",)), ("validation IoU", ("val/iou",)),
           ("validation Chamfer-L2 x1000", ("val/chamfer",))),
          "reconstructions", True, "left: input voxels, right: reconstruction",
          # progressive training switches point sets between phases: the loaders are remade every epoch
          reload_loaders=lambda cfg: len(set(cfg.train.point_resolutions)) > 1,
          exports_latents=True, demo_share=0.535,
          demo_eval=lambda cfg: {"resolution": cfg.demo.eval_resolution},
          demo_sheets=lambda cfg: {"resolution": cfg.demo.eval_resolution},
          mesh_folders=(("Test shapes, reconstructed", "meshes"),)),
    Stage("svr", "Single-view reconstruction (image -> z)", "image", "recon3d.tasks.svr:SVRTask",
          "recon3d.inference.svr", lambda cfg: cfg.svr.epochs, "val/iou", "max",
          (("training loss (latent MSE)", ("train/loss",)), ("validation IoU", ("val/iou",)),
           ("validation latent MSE", ("val/latent_mse",))),
          "", True, learns_from="svr", demo_share=0.15,
          # a weight average: its val IoU swings from one check to the next (docs/results.md, image encoder)
          demo_overrides=("train.ema_decay=0.99",),
          demo_eval=lambda cfg: {"resolution": cfg.train.val_resolution},  # the grid its validation measured on
          demo_sheets=lambda cfg: {"resolution": cfg.demo.eval_resolution}),
    Stage("gan", "Latent GAN (noise -> z)", "", "recon3d.tasks.gan:LatentGANTask", "recon3d.inference.latent",
          lambda cfg: cfg.gan.epochs, "val/mmd", "min",
          (("losses", ("train/critic_loss", "train/generator_loss")),
           ("Wasserstein estimate", ("train/wasserstein", "val/wasserstein")),
           ("MMD (Chamfer-L2 x1000)", ("val/mmd",)), ("coverage", ("val/cov",))),
          "samples", False, "generated shapes (fixed noise)",
          ddp_unused_parameters=True,  # the critic's update leaves the generator idle
          # its shapes come from a weight average of the generator, and val/mmd of a few dozen samples is too noisy
          # to choose among its checkpoints (the demo's runs: docs/results.md, "GAN: which checkpoint to hand on")
          hands_on="last", datamodule="recon3d.data.loading.latents:LatentDataModule", learns_from="gan",
          demo_share=0.1, demo_overrides=("train.val_every_epochs=${demo.gan_eval_every_epochs}",),
          demo_eval=lambda cfg: {"draws": cfg.demo.gan_eval_draws},
          demo_sheets=lambda cfg: {"resolution": cfg.demo.eval_resolution, "steps": cfg.demo.interpolation_steps},
          mesh_folders=(("GAN samples", "gan"), ("Interpolation", "interpolation"))),
    Stage("vrn", "Volumetric regression (image -> view-aligned volume, VRN)", "volume", "recon3d.tasks.vrn:VRNTask",
          "recon3d.inference.vrn", lambda cfg: cfg.vrn.epochs, "val/iou", "max",
          (("training loss (weighted cross-entropy)", ("train/loss",)), ("validation IoU", ("val/iou",)),
           ("validation loss", ("val/loss",))),
          "volumes", True, "input | true depth | predicted depth", demo_share=0.06),
    Stage("stereo", "Stereo view synthesis (left -> right view, Deep3D)", "stereo", "recon3d.tasks.stereo:StereoTask",
          "recon3d.inference.stereo", lambda cfg: cfg.stereo.epochs, "val/mae", "min",
          (("training loss (L1)", ("train/loss",)), ("validation MAE (0-255)", ("val/mae", "val/mae_copy",
                                                                               "val/mae_shift"))),
          "stereo", True, "left | predicted right | true right | disparity", demo_share=0.05,
          # Deep3D sees colour, as in its paper; the other image models see IM-NET's grey views
          demo_overrides=("loader.grayscale=false",)),
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


def register_stage(row: Stage) -> Stage:
    """Add a row to the table (a model from another package); call it before loading a config that names it.

    Raises:
        ValueError: a stage of that name exists, or it learns from an autoencoder when no stage exports latents.
    """
    if row.name in STAGES:
        raise ValueError(f"a stage named {row.name!r} exists already")
    if row.learns_from and not any(s.exports_latents for s in STAGES.values()):
        raise ValueError(f"stage {row.name!r} learns from exported latents, but no stage exports them")
    STAGES[row.name] = row
    return row


def latents_exporter() -> str:
    """The stage whose checkpoints `recon3d export-latents` takes (the autoencoder); "" when none does."""
    return next((row.name for row in STAGES.values() if row.exports_latents), "")


def demo_steps() -> List[str]:
    """The demo's steps in the order they run: meshes, shards, then the table's stages in its order, with the
    export of latents right after the stage that exports them when another stage learns from them, then evaluate
    and report."""
    steps = ["meshes", "shards"]
    learners = any(row.learns_from for row in STAGES.values())
    for row in STAGES.values():
        steps.append(row.name)
        if row.exports_latents and learners and "latents" not in steps:
            steps.append("latents")
    return steps + ["evaluate", "report"]
