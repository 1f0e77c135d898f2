"""From a config to the objects of a training run: DataModule, task (through its from_config), callbacks, loggers,
strategy and trainer."""

from __future__ import annotations

import difflib
import inspect
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Dict, List

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.wandb import _add_prefix
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only
from torch.utils._triton import has_triton

from recon3d.config import Config, to_dict
from recon3d.errors import ConfigError
from recon3d.hardware import native_bf16
from recon3d.stages import STAGES
from recon3d.tasks.checkpoints import register_safe_globals
from recon3d.training.allocation import trains_on_gpu
from recon3d.training.callbacks import (
    AtomicCheckpointIO,
    EpochLog,
    Preemption,
    RankBanner,
    WeightEma,
    rolling_last_checkpoint,
)
from recon3d.training.deepspeed import build_deepspeed_strategy


def build_datamodule(cfg: Config):
    """The DataModule of cfg.train.stage (its row's datamodule: the shards' loader, or the exported latents)."""
    return STAGES[cfg.train.stage].datamodule_class().from_config(cfg)


def check_training_config(cfg: Config, manifest: dict) -> None:
    """Rules that need the shards: there is something to train on, and the loader reads what the stage needs."""
    if manifest["samples"] == 0 or manifest["splits"]["train"]["samples"] == 0:
        raise ConfigError(f"{cfg.loader.shards}: no training samples")
    train_samples = manifest["splits"]["train"]["samples"]
    wanted = STAGES[cfg.train.stage].loader
    if wanted and cfg.loader.batch_size > train_samples:  # a batch would repeat samples, and grow
        raise ConfigError(f"loader.batch_size={cfg.loader.batch_size} is more than the {train_samples} training "
                          f"samples in {cfg.loader.shards}")
    if wanted and cfg.loader.stage and cfg.loader.stage != wanted:
        raise ConfigError(f"train.stage={cfg.train.stage} reads the {wanted} pipeline of the loader, but "
                          f"loader.stage={cfg.loader.stage}: leave loader.stage empty (it follows train.stage)")


def build_task(cfg: Config, manifest: dict):
    """The LightningModule of cfg.train.stage, built by its own from_config."""
    return STAGES[cfg.train.stage].task_class().from_config(cfg, manifest)


def build_callbacks(cfg: Config) -> list:
    ckpt_dir = Path(cfg.train.run_dir) / "checkpoints"
    last = rolling_last_checkpoint(ckpt_dir, cfg.train.checkpoint_every_steps)
    row = STAGES[cfg.train.stage]
    monitor, mode = row.best_by, row.mode
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch:03d}-{step}", monitor=monitor, mode=mode,
                           save_top_k=1, auto_insert_metric_name=False)
    callbacks = [*last, best, LearningRateMonitor(logging_interval="step"), RankBanner(),
                 Preemption(keep=cfg.train.keep_hpc_checkpoints)]
    callbacks += [WeightEma(cfg.train.ema_decay)] if cfg.train.ema_decay else []
    return callbacks + ([] if progress_bar(cfg) else [EpochLog()])


def progress_bar(cfg: Config) -> bool:
    """train.progress: a progress bar on a terminal, one line per epoch in a job log (auto decides by stderr)."""
    return cfg.train.progress == "bar" or (cfg.train.progress == "auto" and sys.stderr.isatty())


def build_loggers(cfg: Config, enable_wandb: bool = True) -> list:
    run_dir = Path(cfg.train.run_dir)
    # a new version folder per (re)start: a resumed run must not overwrite the history it continues
    loggers: List = [CSVLogger(save_dir=str(run_dir), name="logs")]
    if enable_wandb and cfg.train.logger == "wandb" and cfg.train.wandb_mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        wandb_logger = _stepped_wandb_logger()
        loggers.insert(0, wandb_logger(project=cfg.train.wandb_project, name=run_dir.name, save_dir=str(run_dir),
                                       offline=cfg.train.wandb_mode == "offline", config=to_dict(cfg),
                                       id=_wandb_run_id(run_dir), group=cfg.train.wandb_group or None))
    return loggers


def wandb_upload_command(run_dir: str | Path) -> str:
    """The command that uploads a run folder's offline W&B segments into its one W&B run ("" when it has none).

    A run restarted offline (a preempted job, a resumed one) leaves one segment per restart under the same run id.
    The installed wandb's `wandb beta sync --id ID` syncs such fragments of one run in order of start time (its own
    help says so); plain `wandb sync` of same-id fragments is reported to replace history (wandb issue 3841), so it
    is only offered by a wandb whose `beta sync` does not take --id. The segments are named, not the wandb folder:
    its latest-run link would list the newest segment a second time."""
    run_dir = Path(run_dir)
    segments = run_dir / "wandb" / "offline-run-*"
    if not any(segments.parent.glob(segments.name)):
        return ""
    id_file = run_dir / "wandb_id.txt"
    run_id = f" --id {id_file.read_text().strip()}" if id_file.is_file() else ""
    return f"wandb {'beta sync' if _beta_sync_takes_id() else 'sync'}{run_id} {segments}"


def _beta_sync_takes_id() -> bool:
    from wandb.cli.cli import cli  # noqa: PLC0415 - W&B only when a run used it (1 s import)

    beta = cli.commands.get("beta")
    sync = beta.commands.get("sync") if beta is not None else None
    return sync is not None and any("--id" in getattr(param, "opts", ()) for param in sync.params)


def _stepped_wandb_logger():
    """Lightning's WandbLogger with W&B's own step set to the trainer's global step. One training run is one W&B
    run across restarts (its id is kept in the run folder): online, a resumed run continues the same run; offline,
    each restart writes a segment (offline-run-*-<id>) and `wandb_upload_command` uploads them in order of start
    time into that run. With its own per-segment counter every segment would start again at step 0; with the global
    step the segments' rows follow one another (a restart from a preemption checkpoint logs nothing twice; after a
    kill -9 the steps since the last checkpoint are logged again and W&B keeps the first)."""
    class SteppedWandbLogger(WandbLogger):
        @rank_zero_only
        def log_metrics(self, metrics, step=None) -> None:
            if step is None:
                return super().log_metrics(metrics, step)
            metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)  # as WandbLogger does
            self.experiment.log({**metrics, "trainer/global_step": step}, step=step)

    return SteppedWandbLogger


def _wandb_run_id(run_dir: Path) -> str:
    """One W&B run per run folder, kept across resumes (the id is stored in the folder)."""
    path = run_dir / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id)
    return run_id


def build_strategy(cfg: Config):
    """The Lightning strategy: a name, or a DeepSpeedStrategy on train.deepspeed_config completed from the config."""
    train = cfg.train
    if STAGES[train.stage].ddp_unused_parameters and train.strategy == "ddp":
        return "ddp_find_unused_parameters_true"  # DDP must not wait for gradients some steps never produce
    if "deepspeed" not in train.strategy:
        return train.strategy
    return build_deepspeed_strategy(cfg)


def set_matmul_precision(cfg: Config) -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (train.float32_matmul_precision=high, the default): with
    the "highest" default torch starts with, a GPU's fp32 step leaves its tensor cores idle (docs/results.md, GPU
    proof)."""
    torch.set_float32_matmul_precision(cfg.train.float32_matmul_precision)
    torch.backends.cudnn.allow_tf32 = cfg.train.float32_matmul_precision != "highest"


def resolve_precision(train) -> str:
    """train.precision, with "auto" decided on the machine that trains: bf16-mixed where the hardware computes bf16
    natively (a CUDA GPU that supports it; a CPU with avx512_bf16, AMX or Arm bf16), else 32-true: where bf16 is
    emulated it is slower than fp32, hence the check (docs/results.md, training step and precision)."""
    if train.precision != "auto":
        return train.precision
    return "bf16-mixed" if native_bf16("cuda" if trains_on_gpu(train) else "cpu") else "32-true"


# Trainer keywords recon3d sets itself, and the key that sets each (train.trainer may not name them)
SET_BY_RECON3D: Dict[str, str] = {
    "accelerator": "train.accelerator", "devices": "train.devices", "num_nodes": "train.num_nodes",
    "strategy": "train.strategy (and train.deepspeed_config)", "precision": "train.precision",
    "accumulate_grad_batches": "train.accumulate_grad_batches", "max_epochs": "the stage's epochs (e.g. svr.epochs)",
    "max_time": "train.max_minutes", "check_val_every_n_epoch": "train.val_every_epochs",
    "log_every_n_steps": "train.log_every_steps", "default_root_dir": "train.run_dir",
    "callbacks": "recon3d's callbacks", "logger": "train.logger", "enable_progress_bar": "train.progress",
    "plugins": "recon3d's checkpoint writer", "reload_dataloaders_every_n_epochs": "the stage's loader"}


def check_strategy(cfg: Config) -> None:
    """train.strategy against the strategies the installed Lightning knows, before anything is written.

    Raises:
        ConfigError: an unknown name (with the nearest known one).
    """
    known = ["auto", *StrategyRegistry.available_strategies()]
    if cfg.train.strategy not in known:
        close = difflib.get_close_matches(cfg.train.strategy, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
        raise ConfigError(f"train.strategy={cfg.train.strategy!r}: not a strategy of Lightning {L.__version__}{hint}")


def check_precision(cfg: Config) -> None:
    """fp16 is a GPU precision: on the CPU Lightning trains 16-mixed in bf16 while config.json would say 16-mixed.

    Raises:
        ConfigError: 16-mixed or 16-true where training runs on the CPU.
    """
    if cfg.train.precision in ("16-mixed", "16-true") and not trains_on_gpu(cfg.train):
        raise ConfigError(f"train.precision={cfg.train.precision}: fp16 trains on GPUs only (on the CPU Lightning "
                          "would train in bf16 instead); use bf16-mixed, 32-true or auto")


def trainer_settings(cfg: Config) -> dict:
    """train.trainer, checked against the installed Lightning Trainer's keywords.

    Raises:
        ConfigError: a key the Trainer does not take (with the nearest it does), or one recon3d sets from its own key.
    """
    accepted = [name for name in inspect.signature(L.Trainer.__init__).parameters if name != "self"]
    for key in cfg.train.trainer:
        if key in SET_BY_RECON3D:
            raise ConfigError(f"train.trainer.{key}: recon3d sets it from {SET_BY_RECON3D[key]}; set that instead")
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"train.trainer.{key}: not a setting of Lightning's Trainer {L.__version__}{hint}")
    return dict(cfg.train.trainer)


def sync_batchnorm_default(cfg: Config, task, on_gpu: bool) -> bool:
    """Whether BatchNorm statistics are synchronised across processes when train.trainer does not say: yes where
    the task has BatchNorm layers and trains on more than one GPU (each GPU would otherwise normalise its own few
    samples: 16 per GPU for the image encoder). torch's SyncBatchNorm runs on CUDA only, so CPU runs keep their own."""
    several = cfg.train.devices != 1 or cfg.train.num_nodes > 1
    has_batchnorm = task is not None and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                             for m in task.modules())
    return on_gpu and several and has_batchnorm


def build_trainer(cfg: Config, *, enable_wandb: bool = True, extra_callbacks=(), task=None, **overrides):
    """The Trainer of a run: recon3d's settings, then train.trainer's, then `overrides` (tests); `task` decides
    sync_batchnorm's default (sync_batchnorm_default)."""
    register_safe_globals()  # checkpoints reload with weights_only=True
    set_matmul_precision(cfg)
    train, row = cfg.train, STAGES[cfg.train.stage]
    strategy = build_strategy(cfg)
    kwargs = dict(accelerator=train.accelerator, devices=train.devices, num_nodes=train.num_nodes,
                  strategy=strategy, precision=resolve_precision(train),
                  accumulate_grad_batches=train.accumulate_grad_batches,
                  max_epochs=row.epochs(cfg),
                  check_val_every_n_epoch=train.val_every_epochs, log_every_n_steps=train.log_every_steps,
                  default_root_dir=train.run_dir, callbacks=build_callbacks(cfg) + list(extra_callbacks),
                  logger=build_loggers(cfg, enable_wandb),
                  reload_dataloaders_every_n_epochs=1 if row.reload_loaders(cfg) else 0,
                  enable_progress_bar=progress_bar(cfg), enable_model_summary=False)
    if train.max_minutes > 0:
        kwargs["max_time"] = {"minutes": train.max_minutes}
    if "deepspeed" not in str(train.strategy):  # DeepSpeed writes checkpoint folders through its own engine
        kwargs["plugins"] = [AtomicCheckpointIO()]
    kwargs["sync_batchnorm"] = sync_batchnorm_default(cfg, task, trains_on_gpu(train))
    kwargs.update(trainer_settings(cfg))
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def check_compile(cfg: Config) -> bool:
    """Whether train.compile compiles here: off never; auto where training runs on CUDA and triton is installed (on
    CPUs it bought 1.07-1.15x on a 2-core CPU's training step for seconds of compiling per phase, and slowed
    extraction: docs/results.md); on wherever torch.compile has a backend.

    Raises:
        ConfigError: train.compile=on where torch.compile has no backend (naming what is missing).
    """
    wanted = str(cfg.train.compile).lower()
    on_gpu = trains_on_gpu(cfg.train)
    if wanted in ("off", "false") or (wanted == "auto" and not on_gpu):
        return False
    missing = compile_missing("cuda" if on_gpu else "cpu")
    if missing and wanted != "auto":
        raise ConfigError(f"train.compile={cfg.train.compile}: torch.compile cannot run here: {missing}")
    return not missing


def compile_task(cfg: Config, task) -> List[str]:
    """torch.compile, in place, the networks `task` trains (its `compiled_modules`; the state_dict's keys stay those
    of the eager modules) where check_compile says so; returns their names. Where auto cannot compile on a GPU it
    says why and trains eagerly."""
    if not check_compile(cfg):
        missing = trains_on_gpu(cfg.train) and compile_missing("cuda")
        if missing and str(cfg.train.compile).lower() == "auto":
            rank_zero_only(print)(f"train.compile=auto: training eagerly, torch.compile cannot run here: {missing}",
                                  file=sys.stderr)
        return []
    names = [name for name in getattr(task, "compiled_modules", ())
             if isinstance(getattr(task, name, None), torch.nn.Module)]
    for name in names:
        getattr(task, name).compile()
    return names


def compile_missing(device_type: str) -> str:
    """What torch.compile's default backend lacks for `device_type` here ('' when nothing): triton on CUDA, a C++
    compiler on the CPU."""
    if device_type == "cuda":
        return "" if has_triton() else "triton is not installed (it comes with CUDA builds of torch)"
    found = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), "")
    return "" if found else "no C++ compiler (g++, c++, clang++ or $CXX) on PATH"
