"""run(cfg): one training run, shared by `recon3d train`, sweeps and tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from recon3d.config import Config, to_dict
from recon3d.data.writer import load_manifest


@dataclass
class RunResult:
    run_dir: Path
    last_checkpoint: Optional[Path]
    best_checkpoint: Optional[Path]
    metrics: dict
    global_step: int
    epoch: int
    monitor: str = ""  # the metric that picks the best checkpoint
    is_global_zero: bool = True  # False on the other ranks of a multi-process run


def resolve_resume(cfg: Config) -> Optional[str]:
    """The checkpoint to continue from: train.resume is auto (last.ckpt if present), never, or a path."""
    if cfg.train.resume == "never":
        return None
    if cfg.train.resume != "auto":
        if not Path(cfg.train.resume).is_file():
            raise FileNotFoundError(f"train.resume={cfg.train.resume!r} does not exist")
        return cfg.train.resume
    last = Path(cfg.train.run_dir) / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def run(cfg: Config, *, enable_wandb: bool = True, **trainer_overrides) -> RunResult:
    """Train the stage described by cfg (resuming when a last.ckpt exists) and return where things went."""
    import lightning as L

    from recon3d.engine.build import BEST_BY, build_datamodule, build_task, build_trainer, check_training_config

    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    manifest = getattr(datamodule, "manifest", None) or load_manifest(cfg.loader.shards)
    check_training_config(cfg, manifest, datamodule)
    task = build_task(cfg, manifest)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1, sort_keys=True))
    trainer = build_trainer(cfg, enable_wandb=enable_wandb, **trainer_overrides)
    trainer.fit(task, datamodule=datamodule, ckpt_path=resolve_resume(cfg))
    callbacks = [c for c in trainer.checkpoint_callbacks]
    last_file = Path(cfg.train.run_dir) / "checkpoints" / "last.ckpt"
    last = last_file if last_file.is_file() else None
    best_path = callbacks[1].best_model_path if len(callbacks) > 1 else ""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return RunResult(run_dir, last, Path(best_path) if best_path else None, metrics, trainer.global_step,
                     trainer.current_epoch, BEST_BY[cfg.train.stage][0], trainer.is_global_zero)
