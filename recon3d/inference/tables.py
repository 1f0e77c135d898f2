"""Evaluation tables shared by every model: per-shape rows -> per-category summaries, written as CSV and JSON,
printed as text, and sent to the run's loggers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from recon3d.config import load_config
from recon3d.files import atomic_write
from recon3d.runs import run_folder
from recon3d.tasks.scores import category_means, nan_mean
from recon3d.training.build import build_loggers

ROW_LABELS = ("key", "category", "view")  # the columns of a per-shape row that are not scores


def eval_name(stage: str, split: str) -> str:
    """The name of a stage's evaluation tables: eval_<stage>_<split>.json, .csv and _shapes.csv."""
    return f"{stage}_{split}"


def need_shards(shard_dir, stage: str) -> None:
    """Raises ValueError when a stage's evaluation is given no shard folder."""
    if not str(shard_dir or ""):
        raise ValueError(f"evaluating a {stage} checkpoint needs --shards DIR")


def shape_row(key: str, **scores) -> dict:
    """One per-shape row: its key, its category (the key's first part) and its scores."""
    return {"key": key, "category": key.split("/")[0], **scores}


def summarise_rows(rows: List[dict]) -> Dict[str, dict]:
    """{category: {"shapes": n, score: mean}} plus "mean over categories" and "mean over shapes" (NaN scores, such
    as the Chamfer distance of an empty mesh, are left out of the means)."""
    metrics = [k for k in rows[0] if k not in ROW_LABELS]
    means = category_means([(r["category"], {m: r[m] for m in metrics}) for r in rows])
    counts: Dict[str, int] = {}
    for row in rows:
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    summary = {c: {"shapes": n, **{m: means[m][c] for m in metrics}} for c, n in sorted(counts.items())}
    summary["mean over categories"] = {"shapes": len(rows),
                                       **{m: nan_mean([summary[c][m] for c in counts]) for m in metrics}}
    summary["mean over shapes"] = {"shapes": len(rows), **{m: nan_mean([r[m] for r in rows]) for m in metrics}}
    return summary


def _csv_bytes(header: Sequence[str], lines: List[Sequence]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(lines)
    return buffer.getvalue().encode()


def write_eval(out: Path, name: str, rows: List[dict], summary: Dict[str, dict]) -> None:
    """eval_<name>.json and .csv (the summary) and eval_<name>_shapes.csv (the rows) in `out`, each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"eval_{name}_shapes.csv", _csv_bytes(list(rows[0]), [list(r.values()) for r in rows]))
    metrics = list(next(iter(summary.values())))
    atomic_write(out / f"eval_{name}.csv", _csv_bytes(["category", *metrics],
                                                      [[c, *[v[m] for m in metrics]] for c, v in summary.items()]))
    atomic_write(out / f"eval_{name}.json", json.dumps(summary, indent=1).encode())


def finish_eval(rows: List[dict], name: str, out_dir: str | Path | None, where: str) -> Dict[str, dict]:
    """The summary of an evaluation's rows, written to out_dir when given.

    Raises:
        ValueError: no rows (`where` says what was evaluated).
    """
    if not rows:
        raise ValueError(f"{where}: no samples to evaluate")
    summary = summarise_rows(rows)
    if out_dir:
        write_eval(Path(out_dir), name, rows, summary)
    return summary


def format_table(summary: Dict[str, dict], columns: Sequence[str] = ("shapes", "iou", "f1", "chamfer_l2_x1000",
                                                                    "chamfer_l1", "normal_consistency", "fscore@1%",
                                                                    "fscore@2%")) -> str:
    """The summary as a fixed-width text table of `columns` (those the summary has)."""
    columns = [c for c in columns if c in next(iter(summary.values()))]
    head = f"{'category':<22}" + "".join(f"{c:>19}" for c in columns)
    lines = [head, "-" * len(head)]
    for category, values in summary.items():
        cells = "".join(" " * 19 if np.isnan(values[c]) else f"{values[c]:>19.0f}" if c == "shapes"
                        else f"{values[c]:>19.4f}" for c in columns)
        lines.append(f"{category:<22}{cells}")
    return "\n".join(lines)


def log_eval(ckpt: str | Path, name: str, summary: Dict[str, dict]) -> None:
    """Send the summary to the checkpoint's run loggers (CSV always, W&B offline when the run used it) as
    eval/<name>/<category>/<score>; nothing when the checkpoint is not in a run folder (ckpt: a file or the run
    folder itself)."""
    run_dir = run_folder(ckpt)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return
    saved = json.loads(config_path.read_text())
    cfg = load_config([], [f"train.run_dir={run_dir}", f"train.logger={saved['train']['logger']}",
                           f"train.wandb_mode={saved['train']['wandb_mode']}"])
    metrics = {f"eval/{name}/{group}/{metric}": value for group, values in summary.items()
               for metric, value in values.items() if not (isinstance(value, float) and np.isnan(value))}
    for logger in build_loggers(cfg):
        logger.log_metrics(metrics)
        logger.finalize("success")
