"""Using a trained autoencoder: export latents, extract meshes, evaluate a split with the papers' metrics."""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from recon3d.data import schema
from recon3d.geometry.extract import coarse_to_fine_grid, grid_to_mesh
from recon3d.geometry.metrics import FSCORE_THRESHOLDS, sample_surface, surface_metrics, voxel_metrics


def load_task(ckpt: str | Path, device: str = "cpu"):
    import recon3d.engine.build  # noqa: F401  (importing it registers the config classes as safe globals)
    from recon3d.tasks.autoencoder import AutoencoderTask

    task = AutoencoderTask.load_from_checkpoint(str(ckpt), map_location=device, weights_only=True)
    return task.eval().to(device)


def iter_split(shard_dir: str | Path, split: str, batch_size: int, *, surface: bool = False,
               **loader) -> Iterator[dict]:
    """Every sample of a split once, in manifest order, as expanded batches (voxels float); `loader` keywords go to
    ShardDataModule (e.g. the image stage's, from `svr_view_options`)."""
    from recon3d.data.datamodule import ShardDataModule
    from recon3d.data.pipelines import expand_batch

    dm = ShardDataModule(shards=str(shard_dir), batch_size=batch_size, num_workers=0, rank=0, world_size=1, **loader)
    dm.setup()
    dm.set_point_resolution(dm.manifest["config"]["geometry"]["point_resolutions"][0])
    for batch in dm.split_dataloader(split, surface=surface):
        yield expand_batch(batch)


@torch.no_grad()
def export_latents(ckpt: str | Path, shard_dir: str | Path, name: str = "", batch_size: int = 32,
                   device: str = "cpu") -> Path:
    """z for every shape of every split, written next to the shards; returns the latents folder."""
    from recon3d.data.latents import write_latents
    from recon3d.data.writer import file_sha256

    task = load_task(ckpt, device)
    name = name or Path(ckpt).resolve().parent.parent.name or "autoencoder"
    out = Path(shard_dir) / "latents" / name
    found = {}
    for split in schema.SPLITS:
        keys, codes = [], []
        for batch in iter_split(shard_dir, split, batch_size):
            keys += batch["key"]
            codes.append(task.model.encoder(batch["voxels"].to(device)).cpu().numpy())
        if keys:
            found[split] = (keys, np.concatenate(codes))
    write_latents(out, found, {"checkpoint": str(Path(ckpt).resolve()), "checkpoint_sha256": file_sha256(Path(ckpt))})
    return out


def decoder_field(task, z: torch.Tensor):
    """The implicit field of one code z (Z,) as a function of (P, 3) points."""
    return lambda points: task.model.decoder(points[None], z[None])[0, :, 0]


@torch.no_grad()
def extract_mesh(task, z: torch.Tensor, resolution: int = 256, coarse: int = 32):
    """(vertices, faces, evaluated points) of one shape by coarse-to-fine evaluation and marching cubes."""
    grid = coarse_to_fine_grid(decoder_field(task, z), resolution, coarse=min(coarse, resolution), device=z.device)
    verts, faces = grid_to_mesh(grid.values)
    return verts, faces, grid.evaluated


def save_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    import trimesh

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    trimesh.Trimesh(vertices, faces, process=False).export(tmp)
    tmp.replace(path)
    return path


def input_views(shard_dir: str | Path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """The first stored view of each key, composited on white, (H, W, 3) uint8."""
    from recon3d.geometry.render import on_white
    from recon3d.data.verify import read_tar
    from recon3d.data.writer import load_manifest

    wanted, found = set(keys), {}
    for shard in load_manifest(shard_dir)["shards"]:
        for key, members in read_tar(Path(shard_dir) / f"{shard['name']}.tar").items():
            if key in wanted and schema.view_member(0) in members:
                found[key] = on_white(schema.load_png(members[schema.view_member(0)]))
        if len(found) == len(wanted):
            break
    return found


def write_sheet(path: Path, shard_dir: str | Path, rows: List[dict], size: int = 128) -> Path:
    """One line per mesh: the shape's first input view beside a render of the extracted mesh (row["mesh"])."""
    from PIL import Image, ImageDraw

    from recon3d.geometry.render import render_preview

    views = input_views(shard_dir, [r["key"] for r in rows])
    lines = []
    for row in rows:
        vertices, faces = row["mesh"]
        left = views.get(row["key"], np.full((size, size, 3), 255, np.uint8))
        left = np.asarray(Image.fromarray(left).resize((size, size)))
        line = np.concatenate([left, render_preview(vertices, faces, size)], axis=1)
        label = Image.fromarray(line)
        ImageDraw.Draw(label).text((2, 2), row["key"], fill="black")
        lines.append(np.asarray(label))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(lines, axis=0)).save(path)
    return path


@torch.no_grad()
def extract_meshes(ckpt: str | Path, shard_dir: str | Path, out_dir: str | Path, *, split: str = "test",
                   keys: Sequence[str] = (), count: int = 8, resolution: int = 256, fmt: str = "obj",
                   device: str = "cpu") -> List[dict]:
    """Meshes for chosen shapes (by key, or the first `count` of a split); one row per mesh with counts."""
    task = load_task(ckpt, device)
    rows: List[dict] = []
    splits = schema.SPLITS if keys else (split,)
    for name in splits:
        for batch in iter_split(shard_dir, name, 8):
            for i, key in enumerate(batch["key"]):
                if (keys and key not in keys) or (not keys and len(rows) >= count):
                    continue
                z = task.model.encoder(batch["voxels"][i:i + 1].to(device))[0]
                start = time.perf_counter()
                verts, faces, evaluated = extract_mesh(task, z, resolution)
                seconds = time.perf_counter() - start
                path = save_mesh(Path(out_dir) / f"{key.replace('/', '__')}.{fmt}", verts, faces)
                rows.append({"key": key, "path": str(path), "faces": len(faces), "evaluated": evaluated,
                             "dense": (resolution + 1) ** 3, "seconds": seconds, "mesh": (verts, faces)})
    return rows


@torch.no_grad()
def evaluate(ckpt: str | Path, shard_dir: str | Path, *, split: str = "test", resolution: int = 128,
             iou_resolution: int = 0, imnet_points: int = 4096, occnet_points: int = 100_000, device: str = "cpu",
             out_dir: Optional[str | Path] = None) -> Dict[str, dict]:
    """Per-shape metrics on a split, summarised per category, over categories and over shapes.

    Voxel metrics compare the decoder at the cell centres of an iou_resolution^3 grid (0: the stored grid) with the
    stored voxels pooled to it by majority. Surface metrics
    compare a mesh extracted at `resolution` with the shape's stored surface samples: Chamfer-L2 (IM-NET, x1000)
    on `imnet_points` points per side; Chamfer-L1, normal consistency and F-scores with `occnet_points` points on the
    prediction against all stored ground-truth samples.
    """
    task = load_task(ckpt, device)
    rng = np.random.default_rng(0)
    rows = []
    for batch in iter_split(shard_dir, split, 8, surface=True):
        voxels = batch["voxels"].to(device)
        z = task.model.encoder(voxels)
        grid = iou_resolution or voxels.shape[-1]
        occupancy = task.decode_grid(z, grid).cpu().numpy()
        target = (torch.nn.functional.avg_pool3d(voxels, voxels.shape[-1] // grid)[:, 0] > 0.5).float().cpu().numpy()
        for i, key in enumerate(batch["key"]):
            row = {"key": key, "category": key.split("/")[0]}
            row.update(voxel_metrics(occupancy[i], target[i]))
            verts, faces, _ = extract_mesh(task, z[i], resolution)
            gt_points = batch["surface_points"][i].numpy()
            gt_normals = batch["surface_normals"][i].numpy()
            if len(faces):
                pred, pred_n = sample_surface(verts, faces, occnet_points, rng)
                row.update(surface_metrics(pred, gt_points, pred_n, gt_normals))
                few = rng.choice(len(gt_points), min(imnet_points, len(gt_points)), replace=False)
                row["chamfer_l2"] = surface_metrics(pred[:imnet_points], gt_points[few], thresholds=())["chamfer_l2"]
            else:
                row.update({"chamfer_l2": float("nan"), "chamfer_l1": float("nan"),
                            "normal_consistency": 0.0, **{f"fscore@{100 * t:g}%": 0.0 for t in FSCORE_THRESHOLDS}})
            row["chamfer_l2_x1000"] = 1000.0 * row.pop("chamfer_l2")
            rows.append(row)
    if not rows:
        raise ValueError(f"{shard_dir}: split {split!r} has no samples")
    summary = summarise_rows(rows)
    if out_dir:
        write_eval(Path(out_dir), split, rows, summary)
    return summary


def svr_view_options(svr) -> dict:
    """ShardDataModule keywords that show shapes to an image encoder as in its evaluation: its crop, channels and
    held-out views (from the checkpoint's hyperparameters)."""
    hp = svr.hparams
    return {"stage": "image", "crop_size": int(hp.get("crop_size", 128)), "grayscale": int(hp.image_channels) == 1,
            "holdout_views": int(hp.get("holdout_views", 0))}


@torch.no_grad()
def evaluate_svr(ckpt: str | Path, shard_dir: str | Path, *, split: str = "test", resolution: int = 32,
                 device: str = "cpu", out_dir: Optional[str | Path] = None) -> Dict[str, dict]:
    """Single-view reconstruction measured in shape space, per category: each shape of `split` seen through one view
    (a held-out one when the encoder was trained with loader.holdout_views), its predicted code decoded at
    resolution^3. Voxel IoU against the stored voxels pooled to that grid; Chamfer-L2 x1000 (IM-NET) and F-score@1 %
    against the stored surface samples; latent MSE against the autoencoder's own code of the shape."""
    from recon3d.engine.reconstruct import load_svr
    from recon3d.tasks.shape_eval import decode_occupancy, surface_scores, voxel_iou

    svr, autoencoder = load_svr(ckpt, device)
    rows = []
    for batch in iter_split(shard_dir, split, 8, surface=True, **svr_view_options(svr)):
        z = svr.encoder(batch["image"].to(device))
        target = autoencoder.model.encoder(batch["voxels"].to(device))
        pred = decode_occupancy(autoencoder.model.decoder, z, resolution)
        iou = voxel_iou(pred, batch["voxels"].to(device)).cpu().numpy()
        chamfers, fscores = surface_scores(pred.float().cpu().numpy(), batch["surface_points"].numpy())
        mse = ((z - target) ** 2).mean(1).cpu().numpy()
        for i, key in enumerate(batch["key"]):
            rows.append({"key": key, "category": key.split("/")[0], "view": int(batch["view"][i]),
                         "iou": float(iou[i]), "chamfer_l2_x1000": chamfers[i], "fscore@1%": fscores[i],
                         "latent_mse": float(mse[i])})
    if not rows:
        raise ValueError(f"{shard_dir}: split {split!r} has no samples")
    summary = summarise_rows(rows)
    if out_dir:
        write_eval(Path(out_dir), f"svr_{split}", rows, summary)
    return summary


def summarise_rows(rows: List[dict]) -> Dict[str, dict]:
    metrics = [k for k in rows[0] if k not in ("key", "category", "view")]
    by_category: Dict[str, List[dict]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)

    def mean(group, metric):
        values = [r[metric] for r in group if not np.isnan(r[metric])]
        return float(statistics.fmean(values)) if values else float("nan")

    summary = {c: {"shapes": len(g), **{m: mean(g, m) for m in metrics}} for c, g in sorted(by_category.items())}
    summary["mean over categories"] = {"shapes": len(rows), **{
        m: float(np.nanmean([summary[c][m] for c in by_category])) for m in metrics}}
    summary["mean over shapes"] = {"shapes": len(rows), **{m: mean(rows, m) for m in metrics}}
    return summary


def log_eval(ckpt: str | Path, split: str, summary: Dict[str, dict]) -> None:
    """Send the summary to the run's loggers (CSV always, W&B offline when the run used it)."""
    from recon3d.config import load_config
    from recon3d.engine.build import build_loggers

    run_dir = Path(ckpt).resolve().parent.parent
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return
    saved = json.loads(config_path.read_text())
    cfg = load_config([], [f"train.run_dir={run_dir}", f"train.logger={saved['train']['logger']}",
                           f"train.wandb_mode={saved['train']['wandb_mode']}"])
    metrics = {f"eval/{split}/{group}/{name}": value for group, values in summary.items()
               for name, value in values.items() if not (isinstance(value, float) and np.isnan(value))}
    for logger in build_loggers(cfg):
        logger.log_metrics(metrics)
        logger.finalize("success")


def write_eval(out: Path, split: str, rows: List[dict], summary: Dict[str, dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"eval_{split}_shapes.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metrics = list(next(iter(summary.values())))
    with open(out / f"eval_{split}.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["category", *metrics])
        for category, values in summary.items():
            writer.writerow([category, *[values[m] for m in metrics]])
    (out / f"eval_{split}.json").write_text(json.dumps(summary, indent=1))


def format_table(summary: Dict[str, dict], columns: Sequence[str] = ("shapes", "iou", "f1", "chamfer_l2_x1000",
                                                                    "chamfer_l1", "normal_consistency", "fscore@1%",
                                                                    "fscore@2%")) -> str:
    head = f"{'category':<22}" + "".join(f"{c:>19}" for c in columns)
    lines = [head, "-" * len(head)]
    for category, values in summary.items():
        cells = "".join(f"{values[c]:>19.0f}" if c == "shapes" else f"{values[c]:>19.4f}" for c in columns)
        lines.append(f"{category:<22}{cells}")
    return "\n".join(lines)
