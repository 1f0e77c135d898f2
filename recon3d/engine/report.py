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

from recon3d.data.writer import atomic_write

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]
CURVES = {  # stage -> plots: (title, metrics)
    "autoencoder": [("training loss (MSE)", ["train/loss"]), ("validation IoU", ["val/iou"]),
                    ("validation Chamfer-L2 x1000", ["val/chamfer"])],
    "svr": [("training loss (latent MSE)", ["train/loss"]), ("validation IoU", ["val/iou"]),
            ("validation latent MSE", ["val/latent_mse"])],
    "gan": [("losses", ["train/critic_loss", "train/generator_loss"]), ("Wasserstein estimate", ["train/wasserstein",
                                                                                                  "val/wasserstein"]),
            ("MMD (Chamfer-L2 x1000)", ["val/mmd"]), ("coverage", ["val/cov"])],
}
TITLES = {"autoencoder": "Autoencoder (voxels -> z -> implicit field)",
          "svr": "Single-view reconstruction (image -> z)", "gan": "Latent GAN (noise -> z)"}


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
            cells.append(f"<td>{value:.0f}</td>" if c == "shapes" else f"<td>{value:.4f}</td>")
        cls = ' class="mean"' if name.startswith("mean") else ""
        body.append(f"<tr{cls}><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _eval_split(folder: Path, prefix: str) -> str:
    """The split an evaluation folder has tables for (test preferred)."""
    for split in ("test", "val", "train"):
        if (folder / f"{prefix}{split}.json").is_file():
            return split
    return "test"


def _latest(folder: Path) -> Optional[Path]:
    found = sorted(folder.glob("epoch_*.png"))
    return found[-1] if found else None


def stage_section(name: str, stage_dir: Path, evaluation: Path) -> str:
    """Config summary, curves, latest logged picture and evaluation tables of one trained stage."""
    parts = [f"<h2>{html.escape(TITLES.get(name, name))}</h2>"]
    config = _json(stage_dir / "config.json")
    if config:
        train = config["train"]
        parts.append(f"<p class='small'>run folder <code>{html.escape(str(stage_dir))}</code>; "
                     f"stage <code>{html.escape(train.get('stage', 'autoencoder'))}</code>, "
                     f"device <code>{train['accelerator']}</code> "
                     f"x {train['devices']}, strategy <code>{train['strategy']}</code>, precision "
                     f"<code>{train['precision']}</code></p>")
    metrics = read_metrics(stage_dir)
    plots = [svg_plot(title, {m: metrics[m] for m in names if m in metrics})
             for title, names in CURVES.get(name, CURVES["autoencoder"])]
    parts.append("<div class='row'>" + "".join(p for p in plots if p) + "</div>")
    if name == "autoencoder":
        split = _eval_split(evaluation, "eval_")
        summary = _json(evaluation / f"eval_{split}.json")
        if summary:
            parts.append(f"<h3>{split.capitalize()} split, per category</h3>" + table(summary, [
                "shapes", "iou", "precision", "recall", "f1", "chamfer_l2_x1000", "chamfer_l1",
                "normal_consistency", "fscore@1%", "fscore@2%"]))
            parts.append("<p class='small'>IoU on the stored voxel grid; Chamfer-L2 in IM-NET's convention (squared "
                         "distances, mean of both directions, x1000, 4096 points); Chamfer-L1 as OccNet (mean of "
                         "accuracy and completeness); F-score at 1 % / 2 % of the cube edge.</p>")
        parts.append(png_tag(evaluation / "autoencoder_sheet.png", f"{split} shapes: input view | reconstruction"))
        picture = _latest(stage_dir / "reconstructions")
    elif name == "svr":
        split = _eval_split(evaluation, "eval_svr_")
        summary = _json(evaluation / f"eval_svr_{split}.json")
        if summary:
            held = "one held-out view per shape" if config and config["loader"].get("holdout_views") else \
                "view 0 of each shape"
            parts.append(f"<h3>{split.capitalize()} split, per category ({held})</h3>" + table(summary, [
                "shapes", "iou", "chamfer_l2_x1000", "fscore@1%", "latent_mse"]))
        parts.append(png_tag(evaluation / "svr_sheet.png", "held-out view | shape predicted from it"))
        picture = None
    else:
        final = {k: v[-1][1] for k, v in metrics.items() if k in ("val/cov", "val/mmd", "val/empty_samples")}
        if final:
            parts.append("<p>Last validation: " + ", ".join(f"{k} = {v:.4f}" for k, v in sorted(final.items())) +
                         " (coverage and minimum matching distance against the reference split's shapes)</p>")
        parts.append(png_tag(evaluation / "gan_samples.png", "generated shapes"))
        parts.append(png_tag(evaluation / "interpolation.png", "interpolation between two generated shapes"))
        picture = _latest(stage_dir / "samples")
    if picture is not None:
        parts.append(png_tag(picture, f"logged at the last validation ({picture.parent.name}/{picture.name})"))
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


def write_report(run_dir: str | Path) -> Path:
    """Write <run_dir>/report.html from whatever the folder holds; returns its path."""
    run_dir = Path(run_dir)
    stages = _json(run_dir / "stages.json") or {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>recon3d report: {html.escape(run_dir.name)}"
             f"</title><style>{STYLE}</style></head><body>", f"<h1>recon3d run <code>{html.escape(str(run_dir))}"
             f"</code></h1>"]
    if stages:
        rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{s['seconds']:.0f}</td></tr>" for n, s in stages.items())
        total = sum(s["seconds"] for s in stages.values())
        parts.append(f"<h2>Timings</h2><table><tr><th>stage</th><th>seconds</th></tr>{rows}"
                     f"<tr class='mean'><td>total</td><td>{total:.0f}</td></tr></table>")
    manifest = _json(run_dir / "shards" / "manifest.json")
    if manifest:
        from recon3d.data.verify import summarise

        parts.append(f"<h2>Data</h2><pre>{html.escape(summarise(run_dir / 'shards'))}</pre>")
        parts.append(png_tag(run_dir / "contact_sheet.png", "shards: views and voxel projections"))
    named = [(n, run_dir / n) for n in ("autoencoder", "svr", "gan") if (run_dir / n / "config.json").is_file()]
    if not named and (run_dir / "config.json").is_file() and (run_dir / "logs").is_dir():  # one training run
        stage = json.loads((run_dir / "config.json").read_text())["train"].get("stage", "autoencoder")
        named = [(stage, run_dir)]
    for name, folder in named:
        evaluation = run_dir / "evaluation" if (run_dir / "evaluation").is_dir() else folder / "eval"
        parts.append(stage_section(name, folder, evaluation))
    config = _json(run_dir / "config.json")
    if config:
        parts.append(f"<h2>Configuration</h2><details><summary>config.json</summary><pre>"
                     f"{html.escape(json.dumps(config, indent=1, sort_keys=True))}</pre></details>")
    parts.append(CHECK + "</body></html>")
    path = run_dir / "report.html"
    atomic_write(path, "\n".join(parts).encode())
    return path
