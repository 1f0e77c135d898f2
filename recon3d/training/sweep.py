"""`recon3d sweep`: Ray Tune over any config key. Each trial is `run(cfg)`, the same as `recon3d train`.

A sweep file (YAML) names the base config files, fixed overrides, the search space, the metric and the scheduler:

    base: [configs/train/cpu-small.yaml]
    overrides: [train.max_minutes=10]
    metric: val/iou            # default: the stage's best-by metric and mode (recon3d/stages.py)
    mode: max
    search: optuna             # random (default) | grid (every key a grid) | optuna (TPE)
    seed: 0                    # seeds the search: the same file draws the same trials
    startup_trials: 10         # optuna: random draws before TPE models the results (fewer for short sweeps)
    scheduler: asha            # asha (default) | fifo | median | hyperband: stops trials early, by epochs trained;
                               # pbt: population-based training (recon3d/training/pbt.py)
    num_samples: 8
    max_concurrent: 2
    resources: {cpu: 1, gpu: auto}  # per trial; gpu auto: 1 where the Ray cluster has GPUs, else 0
    search_space:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.latent_dim: {choice: [64, 128]}

Trials write to <storage>/<name>/trials/<trial id>/ (checkpoints, CSV logs, one W&B run each, grouped by the sweep's
name); the best trial's overrides go to <storage>/<name>/best.yaml and its full config to best_config.json. Running the
same command again resumes an interrupted sweep: finished trials are kept, unfinished ones continue from their
last.ckpt.

Schedulers count a trial's progress in epochs trained (each report says `epochs_done`), the unit of `max_t` (the
stage's epochs) and of the rungs alike; the first rung is the first validation (train.val_every_epochs). With Tune's
default count of reports, a stage validated every 5 epochs had rungs at 5, 10, 20 epochs and a max_t it never
reached.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List

import yaml
from lightning.pytorch.callbacks import Callback

from recon3d.config import load_config, to_dict
from recon3d.data.writing.executors import init_ray
from recon3d.errors import ConfigError, RunError, Stopped
from recon3d.files import atomic_write
from recon3d.stages import STAGES
from recon3d.training.allocation import check_trial_gpus
from recon3d.training.pbt import OptimiserFromConfig, pbt_scheduler, report_with_checkpoint, restored_checkpoint
from recon3d.training.run import run
from recon3d.training.sweep_file import SweepSpec

PROGRESS = "epochs_done"  # what every trial reports and the schedulers count


def check_cluster_fits(resources: Dict[str, float], cluster: Dict[str, float]) -> None:
    """A trial that asks for more CPUs or GPUs than the whole Ray cluster has would stay PENDING for ever.

    Raises:
        ConfigError: naming what one trial asks for and what the cluster has.
    """
    for name, key in (("cpu", "CPU"), ("gpu", "GPU")):
        if resources.get(name, 0) > cluster.get(key, 0):
            raise ConfigError(f"resources.{name}={resources[name]:g} per trial, but the Ray cluster has "
                              f"{cluster.get(key, 0):g} {key}s in all: no trial could ever start")


def trial_resources(resources: Dict[str, Any], cluster_gpus: float) -> Dict[str, float]:
    """The resources each trial asks Ray for: gpu auto is 1 where the cluster has GPUs, else none."""
    gpu = resources.get("gpu", "auto")
    gpu = (1.0 if cluster_gpus > 0 else 0.0) if gpu == "auto" else float(gpu)
    return {k: v for k, v in {"cpu": float(resources.get("cpu", 1)), "gpu": gpu}.items() if v > 0}


def _space(spec: SweepSpec) -> Dict[str, Any]:
    from ray import tune

    space = {}
    for key, dist in spec.search_space.items():
        kind, values = next(iter(dist.items()))
        space[key] = {"choice": lambda v: tune.choice(v), "grid": lambda v: tune.grid_search(v),
                      "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
                      "randint": lambda v: tune.randint(*v)}[kind](values)
    return space


def scheduler(spec: SweepSpec, max_t: int, first: int = 1):
    """The trial scheduler, counting epochs trained (PROGRESS): max_t the stage's epochs, the first rung (or the
    median rule's grace) at the first validation, `first` epochs in."""
    from ray.tune import schedulers

    first = max(1, min(first, max_t))
    if spec.scheduler == "pbt":
        return pbt_scheduler(_space(spec), spec.metric, spec.mode, first, spec.seed, spec.synch)
    if spec.scheduler == "fifo":
        return schedulers.FIFOScheduler()
    if spec.scheduler == "median":
        return schedulers.MedianStoppingRule(time_attr=PROGRESS, metric=spec.metric, mode=spec.mode,
                                             grace_period=first)
    if spec.scheduler == "hyperband":
        return schedulers.HyperBandScheduler(time_attr=PROGRESS, metric=spec.metric, mode=spec.mode, max_t=max_t)
    return schedulers.ASHAScheduler(time_attr=PROGRESS, metric=spec.metric, mode=spec.mode, max_t=max_t,
                                    grace_period=first, reduction_factor=2)


def searcher(spec: SweepSpec):
    """The search algorithm: Tune's random/grid variant generator (which keeps max_concurrent itself: Tune ignores
    max_concurrent_trials for it), or Optuna's TPE (Tune limits its concurrency); both seeded by spec.seed."""
    from ray.tune.search import BasicVariantGenerator

    if spec.search != "optuna":
        return BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.max_concurrent)
    import optuna  # noqa: PLC0415 - only for search=optuna
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=spec.metric, mode=spec.mode, sampler=optuna.samplers.TPESampler(
        seed=spec.seed, n_startup_trials=spec.startup_trials))


def trial_overrides(params: Dict[str, Any]) -> List[str]:
    return [f"{k}={json.dumps(v)}" for k, v in sorted(params.items())]


def _trainable(spec_dict: dict, sweep_dir: str):
    """The Tune function trainable: build the trial's config and call run(cfg), reporting each validation."""

    def trial(params: Dict[str, Any]) -> None:
        from ray import tune

        # Tune starts each trial in a folder of its own: back to where the sweep was started (where it exists, as on
        # a shared file system), so that relative paths in the overrides (`loader.shards=runs/demo/shards`) mean
        # what they mean to `recon3d train`; they failed with "no manifest.json" before.
        if Path(spec_dict["cwd"]).is_dir():
            os.chdir(spec_dict["cwd"])
        trial_id = tune.get_context().get_trial_id()
        run_dir = Path(sweep_dir) / "trials" / trial_id
        pbt = spec_dict.get("pbt", False)
        start = restored_checkpoint(run_dir, params) if pbt else None  # PBT: a better trial's, perturbed
        cfg = load_config(spec_dict["base"], [*spec_dict["overrides"], *trial_overrides(params),
                                              f"train.run_dir={run_dir}", f"train.wandb_group={spec_dict['name']}",
                                              *([f"train.resume={start}"] if start else [])])
        metric = spec_dict["metric"]

        class ReportToTune(Callback):
            def on_validation_end(self, trainer, module) -> None:
                if trainer.sanity_checking:
                    return
                if metric not in trainer.callback_metrics:  # every stage logs its metrics at every validation
                    logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/") and k.count("/") == 1)
                    raise ConfigError(f"metric {metric}: the {cfg.train.stage} stage does not log it; its "
                                      f"validation logs {', '.join(logged)}")
                values = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
                values.update({"epoch": trainer.current_epoch, PROGRESS: trainer.current_epoch + 1,
                               "step": trainer.global_step, "host": socket.gethostname()})
                if pbt:  # PBT copies trials' checkpoints: every report carries one
                    report_with_checkpoint(trainer, values, trial_id)
                else:
                    tune.report(values)

        callbacks = [ReportToTune(), *([OptimiserFromConfig()] if start else [])]
        with outside_slurm():
            run(cfg, enable_progress_bar=False, extra_callbacks=callbacks, optimiser_from_config=bool(start))

    return trial


@contextlib.contextmanager
def outside_slurm():
    """A trial is one process on one node, not a task of the allocation the Ray workers were started in: without
    the SLURM variables they inherited, neither recon3d's SLURM checks nor Lightning's SLURM detection (which would
    take the allocation's task and node counts for the trial's) apply to it."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "SRUN_", "SBATCH_"))}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


class SweepStopped(Stopped):
    """The sweep stopped on a signal once Ray Tune had saved its state; the same command resumes it."""

    def __init__(self, signum: int, folder: Path) -> None:
        super().__init__(signum, f"{signal.Signals(signum).name}: the sweep stopped and saved its state in {folder}; "
                         "the same command resumes it (finished trials kept, the others go on from their last "
                         "checkpoint)")


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM (a scheduler's stop, which Ray's own handler turns into a stack dump and an abort) and SIGINT end the
    sweep as Ray Tune ends it on SIGUSR1: trials stop, the experiment state is saved one last time, fit returns. A
    second signal stops at once. Yields the list that gets the signal's number."""
    stopped: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def stop(signum, frame) -> None:
        if stopped:
            raise KeyboardInterrupt
        stopped.append(signum)
        print(f"recon3d: {signal.Signals(signum).name} received; stopping the sweep (again: at once)",
              file=sys.stderr, flush=True)
        tune_handler = signal.getsignal(signal.SIGUSR1)  # Tune's graceful stop, installed when fit starts
        if callable(tune_handler):
            tune_handler(signal.SIGUSR1, frame)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    tune_sigint = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT stays with the handler above
    try:
        yield stopped
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if tune_sigint is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_sigint


def run_sweep(spec: SweepSpec, *, address: str = "") -> Dict[str, Any]:
    """Run (or resume) the sweep; returns the best trial's parameters, metric and folder."""
    init_ray(address)  # first: it sets Ray's environment (no usage statistics) before anything imports ray
    import ray
    from ray import tune

    storage = Path(spec.storage).resolve()
    sweep_dir = storage / spec.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    base_cfg = load_config(spec.base, spec.overrides)
    max_t = max(1, STAGES[base_cfg.train.stage].epochs(base_cfg))
    spec_dict = {"base": [str(Path(b).resolve()) for b in spec.base], "overrides": spec.overrides,
                 "metric": spec.metric, "name": spec.name, "cwd": os.getcwd(), "pbt": spec.scheduler == "pbt"}
    cluster = ray.cluster_resources()
    resources = trial_resources(spec.resources, cluster.get("GPU", 0))
    check_trial_gpus(base_cfg, resources.get("gpu", 0))  # before any trial starts
    check_cluster_fits(resources, cluster)
    trainable = tune.with_resources(_trainable(spec_dict, str(sweep_dir)), resources)
    experiment = sweep_dir / "tune"
    if tune.Tuner.can_restore(str(experiment)):
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=_space(spec),
            tune_config=tune.TuneConfig(num_samples=spec.num_samples,
                                        max_concurrent_trials=spec.max_concurrent if spec.search == "optuna" else None,
                                        scheduler=scheduler(spec, max_t, base_cfg.train.val_every_epochs),
                                        search_alg=searcher(spec)),
            run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=1))
    with stop_on_signals() as stopped:
        results = tuner.fit()
    if stopped:
        raise SweepStopped(stopped[0], sweep_dir)
    _check_reported(results, spec, sweep_dir)
    best = results.get_best_result(metric=spec.metric, mode=spec.mode, scope="all")
    best_params = _trained_params(sweep_dir / "trials" / _trial_of(best, sweep_dir), best.config)
    overrides = trial_overrides(best_params)
    atomic_write(sweep_dir / "best.yaml", ("# best trial of sweep " + spec.name + f" by {spec.metric} ({spec.mode})\n"
                                           + "\n".join(_yaml_lines(best_params)) + "\n").encode())
    best_cfg = load_config(spec.base, [*spec.overrides, *overrides])
    atomic_write(sweep_dir / "best_config.json", json.dumps(to_dict(best_cfg), indent=1, sort_keys=True).encode())
    rows = _rows(results, spec, sweep_dir)
    atomic_write(sweep_dir / "trials.json", json.dumps(rows, indent=1, default=str).encode())
    return {"best": best_params, "metric": _best_reported(best, spec), "trials": len(results),
            "folder": str(sweep_dir), "rows": rows}


def _check_reported(results, spec: SweepSpec, sweep_dir: Path) -> None:
    """A sweep in which no trial reported the metric has no best trial: one line with what the trials reported, or
    why they failed.

    Raises:
        RunError: no trial reported spec.metric.
    """
    reported = [r for r in results if r.metrics and r.metrics.get(spec.metric) is not None]
    if not reported:
        seen = sorted({k for r in results for k in (r.metrics or {}) if k.startswith(("val/", "train/"))})
        errors = [_last_line(r.error) for r in results if r.error]
        raise RunError(f"sweep {spec.name}: no trial reported {spec.metric}; "
                       + (f"the trials reported {', '.join(seen)}" if seen else
                          f"the trials failed ({errors[0]})" if errors else "no trial reported anything")
                       + f" (trials in {sweep_dir / 'trials'})")


def _rows(results, spec: SweepSpec, sweep_dir: Path) -> List[dict]:
    """One row per trial that reported: its parameters (those it last trained with, from its run folder: under PBT
    Tune hands a restarted trial the last result of the trial it copied), its best and last value of the metric,
    where it ran."""
    rows = []
    for result in results:
        if result.metrics:
            trial = _trial_of(result, sweep_dir)
            rows.append({"trial": trial, "params": _trained_params(sweep_dir / "trials" / str(trial), result.config),
                         spec.metric: _best_reported(result, spec), "last": result.metrics.get(spec.metric),
                         "epoch": result.metrics.get("epoch"), "host": result.metrics.get("host"),
                         "node_ip": result.metrics.get("node_ip")})
    return rows


def _trial_of(result, sweep_dir: Path) -> str:
    """A result's own trial id (its metrics may be another trial's, under PBT): the trial folder whose id its Tune
    folder's name starts with (trial_<id>_<n>_...; ids are 57aec_00000 or, from Optuna, 8342a11a)."""
    name = Path(result.path).name
    trials = sweep_dir / "trials"
    ids = [d.name for d in trials.iterdir() if name.startswith(f"trial_{d.name}_")] if trials.is_dir() else []
    return max(ids, key=len) if ids else str(result.metrics.get("trial_id"))


def _trained_params(run_dir: Path, params: Dict[str, Any]) -> Dict[str, Any]:
    """The searched keys' values in the trial's config.json (what it trained with last), else `params`."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return params
    found = {}
    for key in params:
        node = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        found[key] = params[key] if node is None else node
    return found


def _last_line(error: BaseException) -> str:
    """The line of a trial's error that says what went wrong: the last of Ray's traceback, without its colours."""
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else type(error).__name__


def _best_reported(result, spec: SweepSpec):
    """A trial's best value of the metric over all its reports: what the best trial is chosen by (scope "all"), and
    what its best checkpoint holds; None when it never reported the metric."""
    frame = result.metrics_dataframe
    values = frame[spec.metric].dropna() if frame is not None and spec.metric in frame else ()
    if len(values) == 0:
        return result.metrics.get(spec.metric)
    return float(values.max() if spec.mode == "max" else values.min())


def _yaml_lines(params: Dict[str, Any]) -> List[str]:
    """Nested YAML for dotted keys, e.g. {"train.lr": 0.01} -> train:\\n  lr: 0.01 (usable with -c)."""
    tree: Dict[str, Any] = {}
    for key, value in params.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return yaml.safe_dump(tree, sort_keys=True).splitlines()

