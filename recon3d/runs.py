"""The layout of a training run folder (train.run_dir): what makes a folder a run, which checkpoint a finished run
hands on to later stages, and the run a checkpoint belongs to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from recon3d.stages import STAGES


def is_run_folder(path: str | Path) -> bool:
    """A training run's folder (train.run_dir): it holds checkpoints/."""
    return (Path(path) / "checkpoints").is_dir()


def pick_handed_on(hands_on: str, best: Optional[Path], last: Optional[Path]) -> Optional[Path]:
    """The checkpoint a run hands on, from its best and last (None where absent): the best, else the last; the last,
    else the best, for a stage that hands on its last (the stage table's `hands_on`)."""
    return (last or best) if hands_on == "last" else (best or last)


def run_checkpoint(run_dir: str | Path) -> Path:
    """What a finished run hands on (pick_handed_on): its best checkpoint by the stage's validation metric (the newest
    best-*) or its last.ckpt, as its stage's `hands_on` says (the stage read from the run's config.json). So
    `--ckpt runs/ae` and `svr.autoencoder_ckpt=runs/ae` name a run, not a file."""
    folder = Path(run_dir) / "checkpoints"
    best = max((p for p in folder.glob("best-*.ckpt") if not p.name.endswith(".fp32.ckpt")),
               key=lambda p: p.stat().st_mtime_ns, default=None)
    last = folder / "last.ckpt" if (folder / "last.ckpt").exists() else None
    chosen = pick_handed_on(_hands_on(Path(run_dir)) if best and last else "best", best, last)
    if chosen is None:
        raise FileNotFoundError(f"{run_dir}: a run folder without a checkpoint (nothing in {folder})")
    return chosen


def _hands_on(run_dir: Path) -> str:
    """The stage table's `hands_on` for the stage a run folder trained ("best" when its config cannot tell)."""
    try:
        stage = json.loads((run_dir / "config.json").read_text())["train"]["stage"]
    except (OSError, ValueError, KeyError, TypeError):
        return "best"
    return STAGES[stage].hands_on if stage in STAGES else "best"


def run_folder(ckpt: str | Path) -> Path:
    """The run folder a checkpoint (or run folder) belongs to: <run>/checkpoints/x.ckpt -> <run>; a run folder is its
    own."""
    path = Path(ckpt).resolve()
    return path if is_run_folder(path) else path.parent.parent


def run_name(ckpt: str | Path) -> str:
    """The name of the run a checkpoint (or run folder) belongs to: <run>/checkpoints/x.ckpt -> <run>."""
    return run_folder(ckpt).name
