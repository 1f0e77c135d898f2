"""report.html: one self-contained page (inline PNGs and SVG plots, no network) describing a run folder.

Works on the demo's folder (stages.json, shards/, autoencoder/, svr/, gan/, evaluation/) and on any single training
run folder (config.json, logs/, checkpoints/): each part appears when its files exist.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from recon3d.data.tools.verify import summarise
from recon3d.files import atomic_write
from recon3d.inference.tables import eval_name
from recon3d.stages import STAGES
from recon3d.workflows.viewer import library_tag, mesh_files, viewer_grid

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]


def read_metrics(run_dir: Path) -> Dict[str, List[Tuple[float, float]]]:
    """{metric: [(step, value)]} from every CSV log version of a run (a resumed run adds a version)."""
    series: Dict[str, Dict[float, float]] = {}
    for path in sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                step = float(row.get("step") or 0)
                for key, value in row.items():
                    if key in ("step", "epoch") or value in ("", None):
                        continue
                    try:
                        series.setdefault(key, {})[step] = float(value)
                    except ValueError:
                        continue
    return {k: sorted(v.items()) for k, v in series.items()}


def svg_plot(title: str, series: Dict[str, List[Tuple[float, float]]], width: int = 420, height: int = 220) -> str:
    """A line chart as inline SVG: one polyline per series, min/max labels on both axes, a legend."""
    points = [(x, y) for values in series.values() for x, y in values if math.isfinite(y)]
    if not points:
        return ""
    left, right, top, bottom = 56, 10, 24, 34
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-9)

    def at(x: float, y: float) -> str:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return f"{px:.1f},{py:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="plot">',
             f'<text x="{left}" y="15" class="t">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             f'fill="none" stroke="#bbb"/>',
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{y1:.4g}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{y0:.4g}</text>',
             f'<text x="{left}" y="{height - bottom + 14}">{x0:.0f}</text>',
             f'<text x="{width - right}" y="{height - bottom + 14}" text-anchor="end">{x1:.0f}</text>',
             f'<text x="{(width + left) / 2:.0f}" y="{height - 4}" text-anchor="middle">step</text>']
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        finite = [(x, y) for x, y in values if math.isfinite(y)]
        if len(finite) == 1:
            parts.append(f'<circle cx="{at(*finite[0]).split(",")[0]}" cy="{at(*finite[0]).split(",")[1]}" r="3" '
                         f'fill="{colour}"/>')
        elif finite:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                         f'points="{" ".join(at(x, y) for x, y in finite)}"/>')
        parts.append(f'<text x="{width - right - 4}" y="{top + 14 + 13 * i}" text-anchor="end" fill="{colour}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def png_tag(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>' \
           f'{html.escape(alt)}</figcaption></figure>'


def table(summary: Dict[str, dict], columns: Sequence[str]) -> str:
    present = [c for c in columns if any(c in row for row in summary.values())]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["category", *present])
    body = []
    for name, row in summary.items():
        cells = []
        for c in present:
            value = row.get(c, float("nan"))
            cells.append("<td></td>" if math.isnan(value) else f"<td>{value:.0f}</td>" if c == "shapes"
                         else f"<td>{value:.4f}</td>")
        cls = ' class="mean"' if name.startswith("mean") else ""
        body.append(f"<tr{cls}><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _eval_summary(folder: Path, stage: str) -> Tuple[str, Optional[dict]]:
    """(split, summary) of the stage's evaluation table in `folder` (test preferred), or ("", None)."""
    for split in ("test", "val", "train"):
        summary = _json(folder / f"eval_{eval_name(stage, split)}.json")
        if summary:
            return split, summary
    return "", None


def _latest(folder: Path) -> Optional[Path]:
    found = sorted(folder.glob("epoch_*.png"))
    return found[-1] if found else None


def _final_validation(metrics: Dict[str, List[Tuple[float, float]]]) -> str:
    final = {k: v[-1][1] for k, v in metrics.items() if k.startswith("val/") and k.count("/") == 1}
    return "<p>Last validation: " + ", ".join(f"{k} = {v:.4f}" for k, v in sorted(final.items())) + "</p>" \
        if final else ""


def stage_section(name: str, stage_dir: Path, evaluation: Path) -> str:
    """Config summary, curves, evaluation table and pictures of one trained stage (its row of the stage table
    says which curves and picture folder)."""
    row = STAGES[name]
    parts = [f"<h2>{html.escape(row.title)}</h2>"]
    config = _json(stage_dir / "config.json")
    if config:
        train = config["train"]
        shown = {key: html.escape(str(train.get(key))) for key in ("accelerator", "devices", "strategy", "precision")}
        parts.append(f"<p class='small'>run folder <code>{html.escape(str(stage_dir))}</code>; "
                     f"stage <code>{html.escape(name)}</code>, device <code>{shown['accelerator']}</code> "
                     f"x {shown['devices']}, strategy <code>{shown['strategy']}</code>, precision "
                     f"<code>{shown['precision']}</code></p>")
    metrics = read_metrics(stage_dir)
    plots = [svg_plot(title, {m: metrics[m] for m in names if m in metrics}) for title, names in row.curves]
    parts.append("<div class='row'>" + "".join(p for p in plots if p) + "</div>")
    parts.append(_final_validation(metrics))
    split, summary = _eval_summary(evaluation, name)
    if summary:
        inference = row.inference_module()
        parts.append(f"<h3>{split.capitalize()} split, per category</h3>" + table(summary, inference.TABLE_COLUMNS))
        parts.append(f"<p class='small'>{html.escape(inference.TABLE_NOTE)}</p>")
    for picture in sorted(evaluation.glob(f"{name}_*.png")):  # sheets an evaluation wrote (the demo's)
        parts.append(png_tag(picture, picture.stem.replace("_", " ")))
    for title, folder in row.mesh_folders:  # the meshes of those sheets, to turn and zoom
        parts.append(viewer_grid(title, mesh_files(evaluation / folder)))
    picture = _latest(stage_dir / row.pictures) if row.pictures else None
    if picture is not None:
        parts.append(png_tag(picture, f"{row.picture_caption}, logged at the last validation "
                                      f"({picture.parent.name}/{picture.name})"))
    return "\n".join(p for p in parts if p)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1280px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:right}td:first-child,th:first-child{text-align:left}tr.mean{font-weight:600;background:#f4f4f4}
.row{display:flex;flex-wrap:wrap;gap:8px}.plot text{font-size:11px;fill:#333}.plot .t{font-size:13px;fill:#000}
figure{display:inline-block;margin:.5em 1em .5em 0}img{max-width:100%;border:1px solid #ddd}
figcaption,.small{font-size:12px;color:#555}pre{background:#f6f6f6;padding:.6em;font-size:11px;overflow:auto;
max-height:28em}"""
CHECK = """<script>window.addEventListener('load',function(){var i=Array.prototype.slice.call(document.images);
document.body.setAttribute('data-images-loaded',i.filter(function(x){return x.complete&&x.naturalWidth>0}).length
+'/'+i.length);});</script>"""


def _timings(stages: dict, minutes) -> str:
    """The stages' seconds beside their budgets (the share of demo.minutes each was given when it started)."""
    def cell(value) -> str:
        return "" if value is None else f"{value:.0f}"

    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{cell(s.get('budget_seconds'))}</td><td>{s['seconds']:.0f}"
                   f"</td></tr>" for n, s in stages.items())
    total = sum(s["seconds"] for s in stages.values())
    budget = f"{minutes * 60:.0f}" if minutes else ""
    return (f"<h2>Timings</h2><table><tr><th>stage</th><th>budget (s)</th><th>seconds</th></tr>{rows}"
            f"<tr class='mean'><td>total</td><td>{budget}</td><td>{total:.0f}</td></tr></table>")


def write_report(run_dir: str | Path) -> Path:
    """Write <run_dir>/report.html from whatever the folder holds; returns its path."""
    run_dir = Path(run_dir)
    stages = _json(run_dir / "stages.json") or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>recon3d report: {html.escape(run_dir.name)}"
             f"</title><style>{STYLE}</style></head><body>", f"<h1>recon3d run <code>{html.escape(str(run_dir))}"
             f"</code></h1>"]
    config = _json(run_dir / "config.json")
    profile = (config or {}).get("demo", {}).get("profile") if stages else None
    if profile:  # which of the demo's profiles ran (recon3d/workflows/demo.py demo_config)
        sizes = "configs/demo-gpu.yaml over demo.yaml: full-size autoencoder" if profile == "gpu" else "demo.yaml"
        parts.append(f"<p>demo profile: <b>{html.escape(profile)}</b> ({sizes})</p>")
    if stages:
        parts.append(_timings(stages, (config or {}).get("demo", {}).get("minutes")))
    manifest = _json(run_dir / "shards" / "manifest.json")
    if manifest:
        parts.append(f"<h2>Data</h2><pre>{html.escape(summarise(run_dir / 'shards'))}</pre>")
        parts.append(png_tag(run_dir / "contact_sheet.png", "shards: views and voxel projections"))
    named = [(n, run_dir / n) for n in STAGES if (run_dir / n / "config.json").is_file()]
    if not named and config and (run_dir / "logs").is_dir():  # one training run
        stage = config["train"].get("stage", "autoencoder")
        named = [(stage, run_dir)]
    for name, folder in named:
        evaluation = run_dir / "evaluation" if (run_dir / "evaluation").is_dir() else folder / "eval"
        parts.append(stage_section(name, folder, evaluation))
    if config:
        parts.append(f"<h2>Configuration</h2><details><summary>config.json</summary><pre>"
                     f"{html.escape(json.dumps(config, indent=1, sort_keys=True))}</pre></details>")
    if any("<model-viewer" in part for part in parts):
        parts.insert(1, library_tag())
    parts.append(CHECK + "</body></html>")
    path = run_dir / "report.html"
    atomic_write(path, "\n".join(parts).encode())
    return path
