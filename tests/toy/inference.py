"""The toy stage at use time: its error per category, and a sheet of its predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from recon3d.data.loading.datamodule import iter_split
from recon3d.inference.outputs import save_png
from recon3d.inference.tables import eval_name, finish_eval, need_shards, shape_row
from recon3d.tasks.checkpoints import load_checkpoint
from tests.toy.task import occupied_share

TABLE_COLUMNS = ("shapes", "error")
TABLE_NOTE = "absolute error of the predicted share of occupied voxels"


@torch.no_grad()
def evaluate(ckpt: str | Path, shard_dir: str | Path, *, split: str = "test", device: str = "cpu",
             out_dir: Optional[str | Path] = None, scale: float = 1.0) -> Dict[str, dict]:
    need_shards(shard_dir, "toy")
    task = load_checkpoint(ckpt, device, expect="toy")
    rows = []
    for batch in iter_split(shard_dir, split, 8):
        errors = scale * (task(batch["voxels"]) - occupied_share(batch["voxels"])).abs()
        rows += [shape_row(key, error=float(errors[i])) for i, key in enumerate(batch["key"])]
    return finish_eval(rows, eval_name("toy", split), out_dir, f"{shard_dir} split {split!r}")


@torch.no_grad()
def write_sheets(ckpt: str | Path, shard_dir: str | Path, *, split: str, keys: Sequence[str], out_dir: str | Path,
                 device: str = "cpu") -> List[Path]:
    task = load_checkpoint(ckpt, device, expect="toy")
    shares = [float(task(batch["voxels"])[i]) for batch in iter_split(shard_dir, split, 8)
              for i, key in enumerate(batch["key"]) if key in keys]
    bars = np.full((32, 8 * max(1, len(shares)), 3), 255, np.uint8)
    for i, share in enumerate(shares):
        bars[32 - int(np.clip(share, 0, 1) * 31) - 1:, 8 * i:8 * i + 6] = 0
    return [save_png(Path(out_dir) / "toy_sheet.png", bars)]
