"""The only place where configuration values reach constructors: DataModule, task, callbacks, loggers, trainer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import torch

from recon3d.config import LOADER_STAGE, SAFE_GLOBALS, Config, ConfigError, to_dict

torch.serialization.add_safe_globals(SAFE_GLOBALS)  # checkpoints reload with weights_only=True


def build_datamodule(cfg: Config):
    if cfg.train.stage == "gan":
        from recon3d.data.latents import LatentDataModule

        if not cfg.gan.autoencoder_ckpt:
            raise ConfigError("train.stage=gan needs gan.autoencoder_ckpt (the trained autoencoder)")
        return LatentDataModule(latents=default_latents(cfg.loader.shards, cfg.gan.autoencoder_ckpt, cfg.gan.latents),
                                batch_size=cfg.gan.batch_size, samples_per_epoch=cfg.gan.samples_per_epoch)
    from recon3d.data.datamodule import ShardDataModule

    return ShardDataModule.from_config(cfg.loader)


def _check_gan_config(cfg: Config, manifest: dict, latent_dim: int) -> None:
    if latent_dim != cfg.model.latent_dim:
        raise ConfigError(f"the latents have z of size {latent_dim} but model.latent_dim={cfg.model.latent_dim}: "
                          f"set model.latent_dim={latent_dim} (the autoencoder's) so the generator matches it")
    split = cfg.gan.reference_split
    if manifest["splits"].get(split, {}).get("samples", 0) == 0:
        raise ConfigError(f"gan.reference_split={split}: {cfg.loader.shards} has no {split} shapes for COV/MMD; "
                          f"choose another split")
    if not manifest["config"]["geometry"].get("surface_points"):
        raise ConfigError(f"{cfg.loader.shards} stores no surface samples (geometry.surface_points=0): "
                          f"COV/MMD need them; rebuild the shards")


def check_training_config(cfg: Config, manifest: dict, datamodule=None) -> None:
    """Rules that need the shards: the phases' point sets exist, the stage has the data it reads."""
    if manifest["samples"] == 0 or manifest["splits"]["train"]["samples"] == 0:
        raise ConfigError(f"{cfg.loader.shards}: no training samples")
    if cfg.train.stage == "gan":
        return _check_gan_config(cfg, manifest, datamodule.latent_dim)
    wanted = LOADER_STAGE[cfg.train.stage]
    if cfg.loader.stage != wanted:
        raise ConfigError(f"train.stage={cfg.train.stage} reads the {wanted} stage of the loader: set "
                          f"loader.stage={wanted}")
    if cfg.train.stage in ("vrn", "stereo"):
        return
    if cfg.train.stage == "svr":
        if not cfg.svr.autoencoder_ckpt:
            raise ConfigError("train.stage=svr needs svr.autoencoder_ckpt (the trained autoencoder)")
        return
    stored = manifest["config"]["geometry"]["point_resolutions"]
    if manifest["source"]["kind"] != "imnet_hdf5":
        missing = [r for r in cfg.train.point_resolutions if r not in stored]
        if missing:
            raise ConfigError(f"train.point_resolutions {missing} are not in the shards (stored: {stored}); "
                              f"rebuild them or change the schedule")


def build_autoencoder_task(cfg: Config, voxel_resolution: int):
    from recon3d.tasks.autoencoder import AutoencoderTask

    train = cfg.train
    return AutoencoderTask(**to_dict(cfg.model), voxel_resolution=voxel_resolution, lr=train.lr, beta1=train.beta1,
                           beta2=train.beta2, point_resolutions=list(train.point_resolutions),
                           phase_epochs=list(train.phase_epochs), val_resolution=train.val_resolution,
                           reconstructions_to_log=train.reconstructions_to_log, run_dir=train.run_dir)


def default_latents(shards: str, autoencoder_ckpt: str, latents: str = "") -> str:
    """`latents`, or where `recon3d export-latents` puts the autoencoder's codes next to the shards."""
    if latents:
        return latents
    return str(Path(shards) / "latents" / Path(autoencoder_ckpt).resolve().parent.parent.name)


def build_svr_task(cfg: Config, image_size: int = 137):
    from recon3d.tasks.svr import SVRTask

    ckpt = Path(cfg.svr.autoencoder_ckpt)
    if not ckpt.is_file():
        raise ConfigError(f"svr.autoencoder_ckpt={str(ckpt)!r} does not exist")
    latent_dim = int(torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["latent_dim"])
    svr = cfg.svr
    return SVRTask(latent_dim=latent_dim, image_channels=1 if cfg.loader.grayscale else 3,
                   architecture=svr.architecture, base_width=svr.base_width, lr=svr.lr, beta1=svr.beta1,
                   beta2=svr.beta2, autoencoder_ckpt=str(ckpt),
                   latents=default_latents(cfg.loader.shards, svr.autoencoder_ckpt, svr.latents),
                   val_resolution=cfg.train.val_resolution, image_size=image_size, crop_size=cfg.loader.crop_size,
                   holdout_views=cfg.loader.holdout_views)


def build_gan_task(cfg: Config):
    from recon3d.tasks.gan import LatentGANTask

    gan = cfg.gan
    fields = {k: getattr(gan, k) for k in ("noise_dim", "generator_widths", "critic_widths", "n_critic", "gp_weight",
                                           "lr", "beta1", "beta2", "autoencoder_ckpt", "reference_split",
                                           "reference_shapes", "eval_samples", "eval_points")}
    return LatentGANTask(**fields, latent_dim=cfg.model.latent_dim, shards=cfg.loader.shards,
                         eval_resolution=cfg.train.val_resolution, samples_to_log=cfg.train.reconstructions_to_log,
                         run_dir=cfg.train.run_dir)


def build_vrn_task(cfg: Config, render: dict):
    from recon3d.geometry.camera import R2N2_FOCAL_PER_WIDTH, focal_for_padding
    from recon3d.tasks.vrn import VRNTask

    size, distances = int(render["image_size"]), render["distance_range"]
    if render.get("padding_px", 0) > 0:
        focal = focal_for_padding(size, render["padding_px"], distances[0])
    else:
        focal = render.get("focal_px") or R2N2_FOCAL_PER_WIDTH * size

    loader = cfg.loader
    if loader.crop_size % (4 * 2 ** cfg.vrn.hourglass_levels):
        raise ConfigError(f"loader.crop_size={loader.crop_size} must be a multiple of 4 x 2^vrn.hourglass_levels "
                          f"({4 * 2 ** cfg.vrn.hourglass_levels}) for the hourglass to pool and return")
    return VRNTask(image_channels=1 if loader.grayscale else 3, depth=loader.volume_depth, stacks=cfg.vrn.stacks,
                   width=cfg.vrn.width, hourglass_levels=cfg.vrn.hourglass_levels,
                   positive_weight=cfg.vrn.positive_weight, lr=cfg.vrn.lr,
                   beta1=cfg.vrn.beta1, beta2=cfg.vrn.beta2, image_size=size, crop_size=loader.crop_size,
                   holdout_views=loader.holdout_views, camera_focal=float(focal),
                   camera_distance=float(sum(distances) / 2), images_to_log=cfg.train.reconstructions_to_log,
                   run_dir=cfg.train.run_dir)


def build_stereo_task(cfg: Config):
    from recon3d.tasks.stereo import StereoTask

    settings = {k: v for k, v in to_dict(cfg.stereo).items() if k != "epochs"}
    return StereoTask(image_channels=1 if cfg.loader.grayscale else 3, **settings,
                      crop_size=cfg.loader.crop_size, holdout_views=cfg.loader.holdout_views,
                      images_to_log=cfg.train.reconstructions_to_log, run_dir=cfg.train.run_dir)


def build_task(cfg: Config, manifest: dict):
    """The LightningModule of cfg.train.stage."""
    if cfg.train.stage == "vrn":
        return build_vrn_task(cfg, manifest["config"]["render"])
    if cfg.train.stage == "stereo":
        return build_stereo_task(cfg)
    if cfg.train.stage == "svr":
        return build_svr_task(cfg, int(manifest["config"]["render"]["image_size"]))
    if cfg.train.stage == "gan":
        return build_gan_task(cfg)
    return build_autoencoder_task(cfg, int(manifest["config"]["geometry"]["voxel_resolution"]))


BEST_BY = {"autoencoder": ("val/iou", "max"), "svr": ("val/iou", "max"), "gan": ("val/mmd", "min"),
           "vrn": ("val/iou", "max"), "stereo": ("val/mae", "min")}


def build_callbacks(cfg: Config) -> list:
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from recon3d.engine.callbacks import rolling_last_checkpoint

    ckpt_dir = Path(cfg.train.run_dir) / "checkpoints"
    last = rolling_last_checkpoint(ckpt_dir, cfg.train.checkpoint_every_steps)
    monitor, mode = BEST_BY[cfg.train.stage]
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch:03d}-{step}", monitor=monitor, mode=mode,
                           save_top_k=1, auto_insert_metric_name=False)
    return [last, best, LearningRateMonitor(logging_interval="step")]


def build_loggers(cfg: Config, enable_wandb: bool = True) -> list:
    from lightning.pytorch.loggers import CSVLogger

    run_dir = Path(cfg.train.run_dir)
    # a new version folder per (re)start: a resumed run must not overwrite the history it continues
    loggers: List = [CSVLogger(save_dir=str(run_dir), name="logs")]
    if enable_wandb and cfg.train.logger == "wandb" and cfg.train.wandb_mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.insert(0, WandbLogger(project=cfg.train.wandb_project, name=run_dir.name, save_dir=str(run_dir),
                                      offline=cfg.train.wandb_mode == "offline", config=to_dict(cfg),
                                      id=_wandb_run_id(run_dir), group=cfg.train.wandb_group or None))
    return loggers


def _wandb_run_id(run_dir: Path) -> str:
    """One W&B run per run folder, kept across resumes (the id is stored in the folder)."""
    path = run_dir / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id)
    return run_id


def build_strategy(cfg: Config):
    """The Lightning strategy: a name, or a DeepSpeedStrategy reading train.deepspeed_config."""
    train = cfg.train
    if train.stage == "gan" and train.strategy == "ddp":
        # the critic's update does not use the generator's weights: DDP must not wait for their gradients
        return "ddp_find_unused_parameters_true"
    if "deepspeed" not in train.strategy:
        return train.strategy
    try:
        import deepspeed  # noqa: F401  (Lightning imports it lazily; fail here with the fix)
    except ImportError:
        raise ConfigError(f"train.strategy={train.strategy} needs DeepSpeed: pip install deepspeed") from None
    from lightning.pytorch.strategies import DeepSpeedStrategy

    stage = int(train.strategy.rsplit("_", 1)[-1]) if train.strategy[-1].isdigit() else 2
    if train.deepspeed_config:
        path = Path(train.deepspeed_config)
        if not path.is_file():
            raise ConfigError(f"train.deepspeed_config={train.deepspeed_config!r} does not exist")
        return DeepSpeedStrategy(config=str(path), logging_batch_size_per_gpu=cfg.loader.batch_size)
    return DeepSpeedStrategy(stage=stage, logging_batch_size_per_gpu=cfg.loader.batch_size)


def build_trainer(cfg: Config, *, enable_wandb: bool = True, extra_callbacks=(), **overrides):
    import lightning as L

    train = cfg.train
    strategy = build_strategy(cfg)
    kwargs = dict(accelerator=train.accelerator, devices=train.devices, num_nodes=train.num_nodes,
                  strategy=strategy, precision=train.precision,
                  accumulate_grad_batches=train.accumulate_grad_batches,
                  max_epochs={"svr": cfg.svr.epochs, "gan": cfg.gan.epochs, "vrn": cfg.vrn.epochs,
                              "stereo": cfg.stereo.epochs}.get(train.stage, sum(train.phase_epochs)),
                  check_val_every_n_epoch=train.val_every_epochs, log_every_n_steps=train.log_every_steps,
                  default_root_dir=train.run_dir, callbacks=build_callbacks(cfg) + list(extra_callbacks),
                  logger=build_loggers(cfg, enable_wandb),
                  # the point set changes between phases: loaders are remade every epoch
                  reload_dataloaders_every_n_epochs=1 if train.stage == "autoencoder" and
                  len(set(train.point_resolutions)) > 1 else 0,
                  enable_model_summary=False)
    if train.max_minutes > 0:
        kwargs["max_time"] = {"minutes": train.max_minutes}
    if "deepspeed" not in str(train.strategy):  # DeepSpeed writes checkpoint folders through its own engine
        from recon3d.engine.callbacks import AtomicCheckpointIO

        kwargs["plugins"] = [AtomicCheckpointIO()]
    kwargs.update(overrides)
    return L.Trainer(**kwargs)
