"""What every stage's inference module provides (the stage table's `inference` names it): the contract `recon3d
eval`, the demo's evaluation, the SLURM chain's eval job and the report rely on, instead of knowing the stages.

A module satisfies StageInference when it defines the names below. `evaluate` and `write_sheets` take the common
keywords listed here and may add keyword-only options of their own with defaults (an extraction grid, a number of
draws); callers pass only options the function names, so a misspelt or foreign option fails (`check_options`)
instead of being dropped. A module that can turn one image into a mesh (`recon3d reconstruct`) also has mesh_maker.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np

PathLike = Union[str, Path]
Summary = Dict[str, dict]  # {category or "mean over ...": {column: value}}
Mesh = Tuple[np.ndarray, np.ndarray]  # vertices (V, 3) float32, faces (F, 3) int


@runtime_checkable
class StageInference(Protocol):
    """A stage's use-time code, as a module."""

    TABLE_COLUMNS: Tuple[str, ...]  # the columns of its evaluation table, in order
    TABLE_NOTE: str  # one line under the table: conventions and units

    def evaluate(self, ckpt: PathLike, shard_dir: PathLike, *, split: str = "test", device: str = "cpu",
                 out_dir: Optional[PathLike] = None) -> Summary:
        """Per-shape scores of a checkpoint on a split, summarised per category; with out_dir, the tables
        eval_<stage>_<split>.json/.csv and the per-shape rows are written there.

        Raises:
            ValueError: no shards where the stage needs them, a checkpoint of another stage, no samples.
        """

    def write_sheets(self, ckpt: PathLike, shard_dir: PathLike, *, split: str, keys: Sequence[str],
                     out_dir: PathLike, device: str = "cpu") -> List[Path]:
        """Pictures for people in out_dir, named <stage>_*.png, showing the shapes `keys` of `split` (a stage that
        makes its own shapes, as a generator does, may show those instead); meshes go in the folders its row's
        mesh_folders names. Returns the pictures written."""


@runtime_checkable
class MeshMaker(Protocol):
    """A stage whose model turns one image into a mesh."""

    def mesh_maker(self, ckpt: PathLike, resolution: int, device: str) -> Tuple[int, Callable[[np.ndarray], Mesh]]:
        """(the image size it was trained on, view (S, S, 3) uint8 -> mesh)."""


COMMON = {"evaluate": ("split", "device", "out_dir"), "write_sheets": ("split", "keys", "out_dir", "device")}


def own_options(function: Callable) -> Tuple[str, ...]:
    """The keyword-only options a stage's evaluate or write_sheets adds to the common ones."""
    common = COMMON.get(function.__name__, ())
    return tuple(name for name, p in inspect.signature(function).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in common)


def check_options(function: Callable, stage: str, options: Mapping[str, object]) -> None:
    """Refuse options the stage's function does not take, naming the ones it does.

    Raises:
        ValueError: an option the function does not name.
    """
    known = own_options(function)
    foreign = sorted(set(options) - set(known))
    if foreign:
        takes = ", ".join(_flag(n) for n in known) or "none"
        article = "an" if stage[:1] in "aeiou" else "a"
        raise ValueError(f"{', '.join(map(_flag, foreign))}: not an option of {article} {stage} checkpoint's "
                         f"{function.__name__} (its options: {takes})")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
