"""Checkpoints that say what they are: every task writes its stage into the checkpoint, and `load_checkpoint`
returns the right task for any checkpoint file without guessing.

A DeepSpeed (ZeRO) checkpoint is a folder; wherever a checkpoint is read, a folder stands for the single fp32 file
consolidated beside it (`last.ckpt/` -> `last.fp32.ckpt`, written once, atomically, and again when the folder is newer).

Checkpoints written before the stage was stored (recon3d 0.1.0) still load: their stage is read from the one
hyperparameter that only that stage's task has.

Checkpoints of the stages that learn from an autoencoder (svr, gan) carry it: its hyperparameters, weights and the
sha256 of the file it was read from (CARRIED_KEY, written by `CarriesAutoencoder`), so a run folder copied to another
machine, or used from another working folder, still decodes its codes. Older ones name it by path only
(`hparams.autoencoder_ckpt`); `load_with_autoencoder` reads those the old way and names the path when it is gone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from recon3d.config import SAFE_GLOBALS
from recon3d.files import atomic_path, file_sha256
from recon3d.runs import is_run_folder, run_checkpoint
from recon3d.stages import STAGES, Stage

CONSOLIDATED = "fp32.ckpt"  # suffix of the single-file checkpoint written beside a ZeRO folder
STAGE_KEY = "recon3d_stage"  # top-level checkpoint key holding the stage name
CARRIED_KEY = "recon3d_autoencoder"  # svr and gan checkpoints: the autoencoder they learnt from (carried_autoencoder)
# hyperparameters that only one stage's task has: how checkpoints without STAGE_KEY are told apart
_LEGACY_MARKERS = (("noise_dim", "gan"), ("architecture", "svr"), ("stacks", "vrn"), ("disparity_levels", "stereo"),
                   ("decoder_widths", "autoencoder"))


def register_safe_globals() -> None:
    """Let torch's weights_only loader rebuild the config classes stored in hyperparameters (idempotent)."""
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


class StageCheckpoint:
    """Mixin for the tasks: writes the class's `stage` into every checkpoint it saves."""

    stage: str = ""

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[STAGE_KEY] = self.stage
        between_epochs(checkpoint)


class CarriesAutoencoder(StageCheckpoint):
    """Mixin for the tasks that learn from an autoencoder named by `hparams.autoencoder_ckpt`: every checkpoint they
    save carries that autoencoder (read once, when the first checkpoint is saved)."""

    _carried: Dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.hparams.get("autoencoder_ckpt") and self._carried is None:
            self._carried = carried_autoencoder(self.hparams.autoencoder_ckpt)
        if self._carried is not None:
            checkpoint[CARRIED_KEY] = self._carried


def carried_autoencoder(path: str | Path) -> Dict[str, Any]:
    """What a dependent checkpoint carries of the autoencoder at `path`: stage, hyperparameters, weights, the sha256 of
    the file and the path it was read from."""
    file = checkpoint_file(path)
    ckpt = read_checkpoint(file)
    if stage_of(ckpt, str(file)).name != "autoencoder":
        raise ValueError(f"{file}: not an autoencoder checkpoint")
    return {STAGE_KEY: "autoencoder", "hyper_parameters": dict(ckpt["hyper_parameters"]),
            "state_dict": ckpt["state_dict"], "sha256": file_sha256(file), "read_from": str(Path(path).resolve())}


def task_from(checkpoint: Dict[str, Any], device: str = "cpu"):
    """The task of a checkpoint dict (its stage's class, its hyperparameters and weights), in eval mode."""
    task = stage_of(checkpoint).task_class()(**checkpoint["hyper_parameters"])
    task.load_state_dict(checkpoint["state_dict"])
    return task.eval().to(device)


def load_with_autoencoder(path: str | Path, device: str = "cpu", *, expect: str):
    """(task, its autoencoder task) of an svr or gan checkpoint: the autoencoder it carries, or for a checkpoint
    written before they carried it (recon3d 0.1), the one its hparams.autoencoder_ckpt names.

    Raises:
        FileNotFoundError: an older checkpoint whose autoencoder is no longer where it names it.
    """
    path = checkpoint_file(path)
    task = load_checkpoint(path, device, expect=expect)
    carried = read_checkpoint(path).get(CARRIED_KEY)
    if carried:
        return task, task_from(carried, device)
    named = task.hparams.autoencoder_ckpt
    if not named or not Path(named).exists():
        raise FileNotFoundError(f"{path}: its autoencoder {named or '(none named)'} does not exist; this checkpoint "
                                f"predates checkpoints that carry their autoencoder: put it back at that path, or "
                                f"retrain the {expect} stage")
    return task, load_checkpoint(named, device, expect="autoencoder")


def between_epochs(checkpoint: Dict[str, Any]) -> None:
    """A checkpoint saved after the next epoch was counted ready but before it started (a preemption signal at the
    boundary) would resume with that epoch counted as run: Lightning sees the finished batches of the epoch before.
    Uncount it, so the resumed run starts that epoch."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    for counts in (progress.get("total", {}), progress.get("current", {})):
        if counts.get("ready", 0) > counts.get("started", 0):
            counts["ready"] = counts["started"]


def checkpoint_file(path: str | Path) -> Path:
    """`path` itself for a file; for a run folder the checkpoint it hands on (run_checkpoint); for a DeepSpeed
    folder its consolidated file (made when missing or stale)."""
    path = Path(path)
    if is_run_folder(path):
        path = run_checkpoint(path)
    return consolidate(path) if path.is_dir() else path


def read_checkpoint(path: str | Path) -> Dict[str, Any]:
    """The checkpoint dict of a file or a DeepSpeed folder (weights_only), on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint torch can read; a folder that is not a usable ZeRO checkpoint.
    """
    path = checkpoint_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    register_safe_globals()
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]})") from None


def stage_of(checkpoint: Dict[str, Any], where: str = "checkpoint") -> Stage:
    """The stage row of a checkpoint dict (its stored stage, or for an old checkpoint its telltale hyperparameter).

    Raises:
        ValueError: neither is there.
    """
    name = checkpoint.get(STAGE_KEY)
    if not name:
        hparams = checkpoint.get("hyper_parameters", {})
        name = next((stage for key, stage in _LEGACY_MARKERS if key in hparams), "")
    if name not in STAGES:
        raise ValueError(f"{where}: not a recon3d checkpoint (no stage recorded, and its hyperparameters match none "
                         f"of {', '.join(STAGES)})")
    return STAGES[name]


def load_checkpoint(path: str | Path, device: str = "cpu", *, expect: str = ""):
    """The task of any recon3d checkpoint (a file or a DeepSpeed folder), in eval mode on `device`.

    Args:
        expect: a stage name; a checkpoint of another stage is then an error naming both.

    Raises:
        FileNotFoundError, ValueError: see read_checkpoint and stage_of; a stage other than `expect`.
    """
    path = checkpoint_file(path)
    row = stage_of(read_checkpoint(path), str(path))
    if expect and row.name != expect:
        raise ValueError(f"{path}: a {row.name} checkpoint, but this needs a {expect} checkpoint "
                         f"(train.stage={expect})")
    task = row.task_class().load_from_checkpoint(str(path), map_location=device, weights_only=True)
    return task.eval().to(device)


def is_zero_folder(path: str | Path) -> bool:
    """Whether `path` is a checkpoint folder written by DeepSpeed (a `latest` tag file or a tag folder of states)."""
    path = Path(path)
    return path.is_dir() and ((path / "latest").is_file() or any(path.glob("*/mp_rank_*_model_states.pt")))


def consolidated_path(folder: str | Path) -> Path:
    """Where the single-file checkpoint of a ZeRO folder lives: beside it, `<name>.fp32.ckpt`."""
    folder = Path(folder)
    stem = folder.name[:-5] if folder.name.endswith(".ckpt") else folder.name
    return folder.with_name(f"{stem}.{CONSOLIDATED}")


def consolidate(folder: str | Path) -> Path:
    """Write (atomically) the fp32 single-file checkpoint of a ZeRO folder beside it, unless an up-to-date one is
    there; returns its path.

    Raises:
        ValueError: not a DeepSpeed checkpoint folder, or a truncated / half-written one (names the folder).
    """
    folder = Path(folder)
    if not is_zero_folder(folder):
        raise ValueError(f"{folder}: not a DeepSpeed checkpoint folder (no 'latest' tag, no model states)")
    out = consolidated_path(folder)
    newest = max(p.stat().st_mtime for p in folder.rglob("*") if p.is_file())
    if out.is_file() and out.stat().st_mtime >= newest:
        return out
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict  # noqa: PLC0415 - needs the deepspeed extra

    try:
        with atomic_path(out, keep_suffix=True) as tmp:
            convert_zero_checkpoint_to_fp32_state_dict(str(folder), str(tmp))
    except Exception as err:  # missing shards, a truncated file: the folder is not usable as it is
        raise ValueError(f"{folder}: cannot consolidate this DeepSpeed checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from None
    return out
