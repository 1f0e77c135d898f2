"""run(cfg): one training run, shared by `recon3d train`, sweeps and tests."""

from __future__ import annotations

import json
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from recon3d.config import Config, to_dict
from recon3d.data.loading.latents import INDEX, default_latents
from recon3d.data.loading.shards import load_manifest
from recon3d.errors import ConfigError, RunError
from recon3d.files import atomic_write, exclusive_lock, file_sha256
from recon3d.runs import pick_handed_on
from recon3d.stages import STAGES
from recon3d.storage import is_object_url
from recon3d.tasks.checkpoints import checkpoint_file, consolidated_path
from recon3d.training.allocation import check_accelerator, check_slurm
from recon3d.training.bucket import run_in_bucket
from recon3d.training.build import (
    build_datamodule,
    build_task,
    build_trainer,
    check_compile,
    check_precision,
    check_strategy,
    check_training_config,
    compile_task,
    trainer_settings,
)
from recon3d.training.callbacks import Preempted, hpc_checkpoints
from recon3d.training.lineage import record_training

RUN_LOCK = ".run.lock"  # in the run folder: held by the run that trains there (owned)


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
    hands_on: str = "best"  # the stage table's choice of what the run hands on: best (else last) | last
    location: str = ""  # the bucket URL of a run folder in object storage (run_dir is its local mirror)

    @property
    def handed_on(self) -> Optional[Path]:
        """The checkpoint later stages and the evaluation use (runs.pick_handed_on: the best, or the last)."""
        return pick_handed_on(self.hands_on, self.best_checkpoint, self.last_checkpoint)


def resolve_resume(cfg: Config) -> Optional[str]:
    """The checkpoint to continue from: train.resume is auto (the newer of last.ckpt, a file or a ZeRO folder, and
    the checkpoint written when a signal stops training, hpc_ckpt_N.ckpt), never, or a path.

    With auto, a checkpoint file that cannot be a checkpoint (empty, cut short, foreign: torch.save writes a zip
    whose directory is at its end) is passed over, with a line naming it, for the next newest, the run's best-*.ckpt
    last; none readable is one line too.

    Raises:
        FileNotFoundError: train.resume names nothing.
        RunError: auto found checkpoints, none of them readable.
    """
    if cfg.train.resume == "never":
        return None
    if cfg.train.resume != "auto":
        if not Path(cfg.train.resume).exists():
            raise FileNotFoundError(f"train.resume={cfg.train.resume!r} does not exist")
        return cfg.train.resume
    run_dir = Path(cfg.train.run_dir)
    found = [p for p in [run_dir / "checkpoints" / "last.ckpt", *hpc_checkpoints(run_dir)] if p.exists()]
    newest = sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    unreadable = []
    for path in newest + (best if newest else []):
        if path.is_dir() or zipfile.is_zipfile(path):
            if unreadable and rank_zero_only.rank == 0:
                print(f"recon3d: {', '.join(map(str, unreadable))}: not a readable checkpoint; resuming from {path}",
                      file=sys.stderr)
            return str(path)
        unreadable.append(path)
    if unreadable:
        raise RunError(f"{run_dir}: no readable checkpoint to resume from ({', '.join(map(str, unreadable))}: empty "
                       "or damaged); train.resume=never starts the run over, train.resume=PATH picks one")
    return None


def check_run_folder(cfg: Config) -> Path:
    """train.run_dir, made when missing: a folder, and one that holds no other stage's run.

    Raises:
        ValueError: it is a file; ConfigError: its config.json is another stage's.
    """
    run_dir = Path(cfg.train.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"train.run_dir={str(run_dir)!r} is a file, not a folder")
    saved = run_dir / "config.json"
    if saved.is_file():
        stage = json.loads(saved.read_text()).get("train", {}).get("stage")
        if stage and stage != cfg.train.stage:
            raise ConfigError(f"{run_dir} holds a {stage} run; train.stage={cfg.train.stage} trains in a folder of "
                              "its own: set another train.run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


@contextmanager
def owned(run_dir: Path):
    """One training run per run folder at a time: the first process (global rank 0) of a run holds the folder's
    lock for the whole run; a second `recon3d train` into the same folder stops at once, naming the holder."""
    if rank_zero_only.rank != 0:
        yield
        return
    with exclusive_lock(run_dir / RUN_LOCK, f"{run_dir}: another run is training in this folder ({{holder}}); wait "
                                            "for it, stop it, or set another train.run_dir"):
        yield


def check_latents(cfg: Config) -> None:
    """The image encoder and the latent GAN learn the codes exported from an autoencoder and decode with that
    autoencoder: codes exported from another checkpoint (a retrained one, a different run) are refused, naming both."""
    learns_from = STAGES[cfg.train.stage].learns_from
    section = getattr(cfg, learns_from) if learns_from else None
    if section is None or not section.autoencoder_ckpt or not Path(section.autoencoder_ckpt).exists():
        return  # the stage's own from_config says what is missing
    index = Path(default_latents(cfg.loader.shards, section.autoencoder_ckpt, section.latents)) / INDEX
    info = json.loads(index.read_text()) if index.is_file() else {}
    recorded = info.get("checkpoint_sha256")
    if recorded and file_sha256(checkpoint_file(section.autoencoder_ckpt)) != recorded:
        exported = info.get("checkpoint", "another checkpoint")
        raise ConfigError(f"{index.parent}: these latents were exported from {exported}, not from "
                          f"{learns_from}.autoencoder_ckpt={section.autoencoder_ckpt} (its sha256 differs): "
                          f"re-export with recon3d export-latents --ckpt {section.autoencoder_ckpt} --shards "
                          f"{cfg.loader.shards}, or set {learns_from}.latents")


def check_resumed_config(cfg: Config, run_dir: Path, resume: Optional[str], optimiser_from_config: bool = False
                         ) -> None:
    """A resumed run against the config its folder last trained with: an optimiser setting (lr, betas) that the
    checkpoint's optimiser state would silently override is refused (unless the run applies the config's over the
    restored state: optimiser_from_config); any other change applies, with a warning."""
    saved = run_dir / "config.json"
    if resume is None or not saved.is_file():
        return
    old, new = _flat(json.loads(saved.read_text())), _flat(to_dict(cfg))
    changed = {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]
               and k not in ("train.resume", "train.run_dir")}  # the folder may have moved (or be a bucket's mirror)
    frozen = [k for k in changed if k.rsplit(".", 1)[-1] in ("lr", "beta1", "beta2")]
    if frozen and not optimiser_from_config:
        asked = ", ".join(f"{k}={changed[k][1]} (trained with {changed[k][0]})" for k in frozen)
        raise ConfigError(f"{run_dir} resumes with its optimiser state, which would keep the old value of {asked}: "
                          "use another train.run_dir, train.resume=never, or the old value")
    if changed and rank_zero_only.rank == 0:  # Lightning's rank from the launcher's variables, before any trainer
        print(f"recon3d: resuming {run_dir} with changed settings (applied): " +
              ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), file=sys.stderr)


def _shard_facts(manifest: dict) -> dict:
    """What a run folder remembers of the shards it trained on: how they were made, and which files."""
    return {"config": manifest.get("config", {}), "shards": {s["name"]: s.get("sha256") for s in manifest["shards"]}}


def check_resumed_shards(manifest: dict, run_dir: Path, resume: Optional[str]) -> None:
    """A resumed run (a requeued job, say) whose shards were rebuilt underneath it: with other preparation
    settings (resolutions, views, voxel rule) it is refused; with other files only, it goes on with a warning."""
    saved = run_dir / "shards.json"
    if resume is None or not saved.is_file():
        return
    old, new = json.loads(saved.read_text()), _shard_facts(manifest)
    was, now = _flat(old["config"]), _flat(new["config"])
    changed = {k: (was.get(k), now.get(k)) for k in was.keys() | now.keys() if was.get(k) != now.get(k)}
    if changed:
        raise ConfigError(f"the shards {run_dir} trained on were rebuilt with other settings ("
                          + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())[:5])
                          + "): resume with those shards, or train in a new train.run_dir")
    if old["shards"] != new["shards"]:
        print(f"recon3d: the shards of {run_dir} changed since its last run (same settings, other files); "
              "resuming on the new ones", file=sys.stderr)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run(cfg: Config, *, enable_wandb: bool = True, extra_callbacks: Sequence = (), optimiser_from_config: bool = False,
        **trainer_overrides) -> RunResult:
    """Train the stage described by cfg (resuming when a last.ckpt exists) and return where things went.

    extra_callbacks join the configured ones (a sweep reports to Ray Tune through one); optimiser_from_config lets a
    resume change the optimiser's settings (PBT's restarts: its callback applies them); trainer_overrides replace
    Trainer arguments (tests use them). A run folder at an object-storage URL trains in a local mirror of it
    (recon3d.training.bucket)."""
    if is_object_url(cfg.train.run_dir):
        return run_in_bucket(cfg, run, enable_wandb=enable_wandb, extra_callbacks=extra_callbacks,
                             optimiser_from_config=optimiser_from_config, **trainer_overrides)
    check_slurm(cfg)
    check_accelerator(cfg)
    check_latents(cfg)
    check_strategy(cfg)
    check_precision(cfg)
    check_compile(cfg)
    trainer_settings(cfg)  # train.trainer's keys, before any work
    run_dir = check_run_folder(cfg)
    with owned(run_dir):
        return _run(cfg, run_dir, enable_wandb, extra_callbacks, trainer_overrides, optimiser_from_config)


def _run(cfg: Config, run_dir: Path, enable_wandb: bool, extra_callbacks: Sequence, trainer_overrides: dict,
         optimiser_from_config: bool = False) -> RunResult:
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    manifest = getattr(datamodule, "manifest", None) or load_manifest(cfg.loader.shards)
    check_training_config(cfg, manifest)
    task = build_task(cfg, manifest)
    compiled = compile_task(cfg, task)
    if compiled:
        rank_zero_only(print)(f"train.compile: torch.compile of {', '.join(compiled)}", file=sys.stderr)
    resume = resolve_resume(cfg)
    check_resumed_config(cfg, run_dir, resume, optimiser_from_config)
    check_resumed_shards(manifest, run_dir, resume)
    # every rank writes the same two files: through temp names, or a rank reading them (above) while another
    # truncates them reads nothing (seen: a requeued two-node job whose second rank died on an empty shards.json)
    atomic_write(run_dir / "config.json", json.dumps(to_dict(cfg), indent=1, sort_keys=True).encode())
    atomic_write(run_dir / "shards.json", json.dumps(_shard_facts(manifest), indent=1, sort_keys=True).encode())
    trainer = build_trainer(cfg, enable_wandb=enable_wandb, extra_callbacks=extra_callbacks, task=task,
                            **trainer_overrides)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
    except Preempted:
        _finish_wandb(trainer, preempted=True)
        raise
    row = STAGES[cfg.train.stage]
    last = _single_file(Path(cfg.train.run_dir) / "checkpoints" / "last.ckpt", trainer.is_global_zero)
    best_path = best_checkpoint(trainer.checkpoint_callbacks, row.best_by)
    best = _single_file(Path(best_path), trainer.is_global_zero) if best_path else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    result = RunResult(run_dir, last, best, metrics, trainer.global_step, trainer.current_epoch, row.best_by,
                       trainer.is_global_zero, row.hands_on)
    _record_lineage(cfg, trainer, result.handed_on, metrics)
    _finish_wandb(trainer)
    return result


def _single_file(path: Path, is_global_zero: bool) -> Optional[Path]:
    """A checkpoint as one file: itself, or for a ZeRO folder the fp32 file consolidated beside it (by rank 0, once
    every rank has written its shard); None when there is none."""
    if not path.exists():
        return None
    return consolidated_path(path) if path.is_dir() and not is_global_zero else checkpoint_file(path)


def best_checkpoint(callbacks: Sequence, monitor: str) -> str:
    """The best file of the checkpoint callback that watches `monitor` ("" when none does or none was saved): found
    by what it monitors, not by its place in the list (extra callbacks may add checkpoints of their own)."""
    for callback in callbacks:
        if getattr(callback, "monitor", None) == monitor and callback.best_model_path:
            return callback.best_model_path
    return ""


def _record_lineage(cfg: Config, trainer, checkpoint: Optional[Path], metrics: dict) -> None:
    """W&B artifacts of what the run read and the checkpoint it hands on (rank 0, when W&B is on)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            record_training(cfg, logger.experiment, checkpoint, metrics)


def _finish_wandb(trainer, preempted: bool = False) -> None:
    """Close this run's W&B run: a later run in the same process (the demo's next stage, a sweep's next trial)
    would otherwise log into it. A preempted run is marked so (W&B shows it as preempted, not failed)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            import wandb  # noqa: PLC0415 - W&B only when used (1 s import)

            if wandb.run is not None:
                if preempted:
                    wandb.run.mark_preempting()
                wandb.finish()
