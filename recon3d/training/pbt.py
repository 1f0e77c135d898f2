"""Population-based training for `recon3d sweep` (`scheduler: pbt`): trials report a Tune checkpoint at every
validation; at each perturbation interval Tune restarts a trial of the bottom quantile from a checkpoint of the top
quantile with perturbed settings (x1.2 / x0.8 of a number, or a fresh draw from the sweep file's distribution).

The restarted trial resumes the copied checkpoint (weights, optimiser moments, epoch and step) but trains with its
own, perturbed, settings: `OptimiserFromConfig` writes the config's learning rate and betas over the restored
optimiser's (a plain resume keeps the checkpoint's, which is why `recon3d train` refuses a changed lr on resume),
and keeps a schedule's progress (a cosine schedule halfway down stays halfway down, from the new rate). Each
restart is one line of the trial's `pbt.jsonl`: the epoch, the trial it copied, the settings it continued with and
the CSV log of the segment (`logs/version_N`).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from lightning.pytorch.callbacks import Callback

CHECKPOINT = "trial.ckpt"  # inside each Tune checkpoint folder, with source.json (trial id, epoch)
LOG = "pbt.jsonl"


def pbt_scheduler(space: Dict[str, Any], metric: str, mode: str, interval: int, seed: int, synch: bool = False):
    """Tune's PBT counting epochs trained (`epochs_done`), perturbing every `interval` epochs (the validation
    interval: a trial's score is only known there), the sweep file's distributions as the mutations. Asynchronous by
    default (a trial compares itself with the others' latest scores when it reaches the point; one that finishes
    before the others report is never compared); `synch` makes every trial wait there for the rest."""
    from ray.tune.schedulers import PopulationBasedTraining

    random.seed(seed)  # PBT draws its perturbations from Python's random module
    return PopulationBasedTraining(time_attr="epochs_done", metric=metric, mode=mode,
                                   perturbation_interval=max(1, interval), hyperparam_mutations=space,
                                   quantile_fraction=0.25, resample_probability=0.25, synch=synch)


def report_with_checkpoint(trainer, metrics: dict, trial_id: str) -> None:
    """tune.report with a checkpoint of the trainer as it stands (Tune copies it into the sweep's storage)."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="recon3d-pbt-") as folder:
        trainer.save_checkpoint(str(Path(folder) / CHECKPOINT))
        (Path(folder) / "source.json").write_text(json.dumps({"trial": trial_id, "epoch": trainer.current_epoch}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def restored_checkpoint(run_dir: Path, params: Dict[str, Any]) -> Optional[Path]:
    """The checkpoint Tune hands this trial (PBT's copy of a better trial, or the trial's own after a pause), copied
    into the run folder and logged in pbt.jsonl; None when Tune hands none (a trial's first start)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "checkpoints" / "pbt-start.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as folder:
        shutil.copyfile(Path(folder) / CHECKPOINT, target)
        source = json.loads((Path(folder) / "source.json").read_text())
    versions = [int(d.name.split("_")[1]) for d in (run_dir / "logs").glob("version_*") if d.name[8:].isdigit()]
    with open(run_dir / LOG, "a") as log:  # log_version: the CSV log this segment writes (logs/version_N)
        log.write(json.dumps({"time": time.time(), "copied_trial": source["trial"], "epoch": source["epoch"],
                              "params": params, "log_version": max(versions, default=-1) + 1},
                             sort_keys=True, default=str) + "\n")
    return target


def _optimizers(configured) -> List:
    """The optimisers of whatever configure_optimizers returned (an optimiser, a dict, or lists of either)."""
    if isinstance(configured, dict):
        return [configured["optimizer"]]
    if isinstance(configured, (list, tuple)):
        if len(configured) == 2 and isinstance(configured[0], (list, tuple)):  # ([optimisers], [schedulers])
            return list(configured[0])
        return [o for item in configured for o in _optimizers(item)]
    return [configured]


class OptimiserFromConfig(Callback):
    """After a restore: the optimiser's settings (lr, betas, weight decay) from the config, its state (moments,
    steps) and the schedule's progress from the checkpoint."""

    def on_train_start(self, trainer, pl_module) -> None:
        fresh = _optimizers(pl_module.configure_optimizers())  # the config's settings, on fresh optimisers
        for restored, configured in zip(trainer.optimizers, fresh):
            for old, new in zip(restored.param_groups, configured.param_groups):
                base_old = old.get("initial_lr", old["lr"])
                base_new = new.get("initial_lr", new["lr"])
                progress = old["lr"] / base_old if base_old else 1.0  # where the schedule stands
                for key in ("betas", "weight_decay", "eps"):
                    if key in new:
                        old[key] = new[key]
                old["lr"] = base_new * progress
                if "initial_lr" in old:
                    old["initial_lr"] = base_new
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [g.get("initial_lr", g["lr"]) for g in scheduler.optimizer.param_groups]
