"""Sweep files: what a `recon3d sweep` file may say (SweepSpec), read and checked in full before Ray starts, so that
a typo, a malformed distribution or an impossible trial is one line naming the file and the key (recon3d/training/
sweep.py runs what it describes; its docstring shows a file)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import yaml

from recon3d.config import config_file, load_config
from recon3d.errors import ConfigError
from recon3d.stages import STAGES
from recon3d.training.allocation import check_trial_gpus

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")
SCHEDULERS = ("asha", "fifo", "median", "hyperband", "pbt")
# what population-based training may perturb: settings a checkpoint does not fix (the optimiser's, a loss weight);
# a model's shape cannot change under a copied checkpoint
PBT_SETTINGS = ("lr", "lr_final", "beta1", "beta2", "gp_weight", "positive_weight", "n_critic", "ema_decay")
SEARCHES = ("random", "grid", "optuna")


@dataclass
class SweepSpec:
    search_space: Dict[str, Dict[str, Any]]
    base: List[str] = field(default_factory=list)
    overrides: List[str] = field(default_factory=list)
    metric: str = ""  # empty: the stage's best-by metric
    mode: str = ""  # empty: that metric's mode
    scheduler: str = "asha"
    search: str = "random"  # random | grid | optuna (TPE, seeded by seed)
    num_samples: int = 4
    max_concurrent: int = 1
    resources: Dict[str, Any] = field(default_factory=lambda: {"cpu": 1, "gpu": "auto"})  # per trial
    name: str = ""
    storage: str = "runs/sweeps"
    seed: int = 0  # seeds the search (random draws or Optuna's TPE sampler)
    startup_trials: int = 10  # optuna: trials drawn at random before TPE models the results (Optuna's default)
    synch: bool = False  # pbt: every trial waits at each perturbation point for the others (Tune's synchronous PBT)


def load_sweep(path: str | Path, extra_base: List[str] = (), extra_overrides: List[str] = ()) -> SweepSpec:
    """Read and check a sweep file; every searched key is tried against the config schema before Ray starts."""
    path = config_file(path)  # as -c files: also among the installed configs (configs/sweep/...), from any folder
    raw = _read(path)
    unknown = set(raw) - set(SweepSpec.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)} (valid: "
                          f"{sorted(SweepSpec.__dataclass_fields__)})")
    if not raw.get("search_space"):
        raise ConfigError(f"{path}: no search_space")
    spec = SweepSpec(**raw)
    if not isinstance(spec.num_samples, int) or spec.num_samples < 1:
        raise ConfigError(f"{path}: num_samples={spec.num_samples!r}: at least 1 trial")
    if not isinstance(spec.max_concurrent, int) or spec.max_concurrent < 1:
        raise ConfigError(f"{path}: max_concurrent={spec.max_concurrent!r}: at least 1")
    spec.base = [*spec.base, *extra_base]
    spec.overrides = [*spec.overrides, *extra_overrides]
    spec.name = spec.name or path.stem
    if spec.scheduler not in SCHEDULERS:
        raise ConfigError(f"{path}: scheduler={spec.scheduler!r}: one of {SCHEDULERS}")
    if spec.search not in SEARCHES:
        raise ConfigError(f"{path}: search={spec.search!r}: one of {SEARCHES}")
    _check_resources(spec.resources, path)
    base = load_config(spec.base, spec.overrides)
    if spec.resources.get("gpu", "auto") != "auto":
        check_trial_gpus(base, float(spec.resources["gpu"]))
    row = STAGES[base.train.stage]
    if not spec.metric:
        spec.metric, spec.mode = row.best_by, spec.mode or row.mode
    spec.mode = spec.mode or "max"
    if spec.mode not in ("min", "max"):
        raise ConfigError(f"{path}: mode must be min or max")
    _check_space(spec, path)
    if spec.scheduler == "pbt":
        _check_pbt(spec, path)
    if not isinstance(spec.startup_trials, int) or spec.startup_trials < 1:
        raise ConfigError(f"{path}: startup_trials={spec.startup_trials}: at least 1 (Optuna draws them at random)")
    if spec.search == "optuna":
        try:
            import optuna  # noqa: F401, PLC0415 - the search's own package, checked before Ray starts
        except ImportError:
            raise ConfigError(f"{path}: search=optuna needs optuna: pip install optuna") from None
    return spec


def _read(path: Path) -> dict:
    """A sweep file's mapping; ConfigError (with the line) when it is not YAML or not a mapping."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping of sweep keys, got {type(raw).__name__}")
    return raw


def _check_space(spec: SweepSpec, path: Path) -> None:
    """Each searched key: a known distribution with sound values, one its search takes, and a key the config
    schema has (its first value is tried)."""
    for key, dist in spec.search_space.items():
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise ConfigError(f"{path}: search_space.{key}: one of {DISTRIBUTIONS} with its values, "
                              f"e.g. {{loguniform: [1.0e-4, 1.0e-2]}}")
        kind, values = next(iter(dist.items()))
        _check_values(f"{path}: search_space.{key}", kind, values)
        if (spec.search == "grid") != (kind == "grid") and spec.search != "random":
            raise ConfigError(f"{path}: search_space.{key}: {kind} under search={spec.search} (grid search takes "
                              "grid values only; Optuna samples and takes no grid)")
        probe = values[0] if isinstance(values, list) else values
        load_config(spec.base, [*spec.overrides, f"{key}={json.dumps(probe)}"])  # a typo fails here, named


def _check_pbt(spec: SweepSpec, path: Path) -> None:
    """PBT draws the first values at random and perturbs them from the same distributions: random search, no grid,
    and only settings a copied checkpoint keeps working with.

    Raises:
        ConfigError: naming the key or the search.
    """
    if spec.search != "random":
        raise ConfigError(f"{path}: scheduler=pbt draws and perturbs its own values: search={spec.search} does not "
                          "apply (leave search at random)")
    for key, dist in spec.search_space.items():
        if next(iter(dist)) == "grid":
            raise ConfigError(f"{path}: search_space.{key}: PBT perturbs from a distribution; grid has none")
        if key.rsplit(".", 1)[-1] not in PBT_SETTINGS:
            raise ConfigError(f"{path}: search_space.{key}: PBT copies checkpoints between trials, so it perturbs "
                              f"only settings a checkpoint does not fix ({', '.join(PBT_SETTINGS)})")


def _check_values(where: str, kind: str, values: Any) -> None:
    """A distribution's values: choice and grid a non-empty list; uniform and loguniform [low, high] numbers with
    low < high (loguniform low > 0); randint [low, high] integers with low < high.

    Raises:
        ConfigError: naming where and what is wrong.
    """
    if kind in ("choice", "grid"):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {kind} takes a non-empty list of values, got {values!r}")
        return
    numbers = isinstance(values, list) and len(values) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numbers or values[0] >= values[1]:
        raise ConfigError(f"{where}: {kind} takes [low, high] with low < high, got {values!r}")
    if kind == "loguniform" and values[0] <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {values!r}")
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}: randint takes two integers, got {values!r}")


def _check_resources(resources: Dict[str, Any], path: Path) -> None:
    """resources: cpu (a number > 0) and gpu (a number >= 0, or auto) per trial.

    Raises:
        ConfigError: another key, or a value out of range (naming the file).
    """
    unknown = set(resources) - {"cpu", "gpu"}
    if unknown:
        raise ConfigError(f"{path}: resources.{sorted(unknown)[0]}: per-trial resources are cpu and gpu")
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", "auto")
    if not isinstance(cpu, (int, float)) or cpu <= 0:
        raise ConfigError(f"{path}: resources.cpu={cpu!r}: a number of CPUs per trial, > 0")
    if gpu != "auto" and (not isinstance(gpu, (int, float)) or gpu < 0):
        raise ConfigError(f"{path}: resources.gpu={gpu!r}: a number of GPUs per trial (>= 0), or auto")
