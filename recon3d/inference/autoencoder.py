"""Using a trained autoencoder: export latents, extract meshes, evaluate a split with the papers' metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from recon3d.data import schema
from recon3d.data.loading.datamodule import iter_split
from recon3d.data.loading.latents import write_latents
from recon3d.files import file_sha256
from recon3d.geometry.extract import coarse_to_fine_grids, grid_bytes
from recon3d.geometry.marching import corner_grid_mesh
from recon3d.geometry.metrics import FSCORE_THRESHOLDS, sample_surface, surface_metrics, voxel_metrics
from recon3d.hardware import available_memory
from recon3d.inference.mean_shape import mean_shape_iou, mean_voxels, pooled_voxels
from recon3d.inference.outputs import save_mesh, write_sheet
from recon3d.inference.tables import eval_name, finish_eval, need_shards, shape_row
from recon3d.runs import run_name
from recon3d.stages import STAGES
from recon3d.storage import is_object_url, join, mirrored
from recon3d.tasks.checkpoints import checkpoint_file, load_checkpoint
from recon3d.tasks.decoding import inference_dtype, refine_in_fp32

TABLE_COLUMNS = ("shapes", "iou", "iou_mean_shape", "f1", "chamfer_l2_x1000", "chamfer_l1", "normal_consistency",
                 "fscore@1%", "fscore@2%")
TABLE_NOTE = ("iou_mean_shape: the training set's mean shape, the score of answering one average shape; "
              "Chamfer-L2: IM-NET convention (squared distances, mean of both directions) x1000 on 4096 points; "
              "Chamfer-L1: OccNet (accuracy + completeness) / 2; F-score at 1/2 % of the cube edge")


def load_autoencoder(ckpt: str | Path, device: str = "cpu"):
    """The AutoencoderTask of an autoencoder checkpoint, in eval mode."""
    return load_checkpoint(ckpt, device, expect="autoencoder")


@torch.no_grad()
def export_latents(ckpt: str | Path, shard_dir: str | Path, name: str = "", batch_size: int = 32,
                   device: str = "cpu") -> str | Path:
    """z for every shape of every split, written next to the shards; returns the latents folder."""
    name = name or run_name(ckpt) or "autoencoder"
    if Path(name).name != name or name in (".", ".."):
        raise ValueError(f"--name {name!r}: a folder name under {Path(shard_dir) / 'latents'}, not a path")
    task = load_autoencoder(ckpt, device)
    found = {}
    for split in schema.SPLITS:
        keys, codes = [], []
        for batch in iter_split(shard_dir, split, batch_size):
            keys += batch["key"]
            codes.append(task.model.encoder(batch["voxels"].to(device)).cpu().numpy())
        if keys:
            found[split] = (keys, np.concatenate(codes))
    weights = checkpoint_file(ckpt)  # the file itself, or a DeepSpeed folder's consolidated file
    info = {"checkpoint": str(Path(ckpt).resolve()), "checkpoint_sha256": file_sha256(weights)}
    if is_object_url(shard_dir):  # written whole into the bucket, the index last
        out_url = join(str(shard_dir), "latents", name)
        with mirrored(out_url, fetch=False) as local:
            write_latents(local, found, info)
        return out_url
    out = Path(shard_dir) / "latents" / name
    write_latents(out, found, info)
    return out


def decoder_fields(task, z: torch.Tensor, dtype: Optional[torch.dtype] = None, *, threshold: float = 0.5,
                   margin: float = 0.01):
    """The implicit fields of codes z (S, Z) as one function of (P, 3) points and (P,) indices into z's rows ->
    (P,) float32 values: the points of many shapes decoded in the same calls (batched extraction).

    With dtype bfloat16 (default: inference_dtype of z's device) the decoder runs under bf16 autocast, and the
    points whose values come within `margin` of `threshold` are evaluated again in fp32: bf16 moves a trained
    decoder's values by a few hundredths, enough to flip cells near the surface and nowhere else (how far, and the
    IoU against fp32 with and without the second pass: docs/results.md, evaluation and extraction).
    """
    dtype = dtype or inference_dtype(z.device)
    decoder = task.model.decoder

    # On a CPU, batches of 4096 points keep a 1024-wide layer's activations in cache (faster than 65536 at a time:
    # docs/results.md); a GPU takes 2^20 points at once (2 GiB per 1024-wide bf16 layer)
    chunk = 4096 if z.device.type == "cpu" else 1 << 20

    def run(points: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.cat([decoder(points[None, i:i + chunk], z, shape[i:i + chunk])[0, :, 0].float()
                          for i in range(0, len(points), chunk)]) if len(points) else points.new_zeros(0)

    if dtype != torch.bfloat16:
        return run

    def field(points: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, dtype=torch.bfloat16):
            values = run(points, shape)
        return refine_in_fp32(values, points, run, threshold, margin, shape)

    return field


def decoder_field(task, z: torch.Tensor, dtype: Optional[torch.dtype] = None, **kwargs):
    """decoder_fields of one code z (Z,): a function of (P, 3) points -> (P,) float32 values."""
    fields = decoder_fields(task, z[None], dtype, **kwargs)
    return lambda points: fields(points, torch.zeros(len(points), dtype=torch.long, device=points.device))


def extraction_group(resolution: int, device, most: int = 64) -> int:
    """How many shapes one batched extraction takes at resolution^3 on `device`: on a GPU a quarter of its free
    memory (all `most` where it cannot be told), at most `most`; on a CPU one (its GEMMs are as efficient one shape
    at a time, and several shapes' grids fall out of its caches: docs/results.md)."""
    if torch.device(device).type == "cpu":
        return 1
    free = available_memory(device)
    return max(1, min(most, free // (4 * grid_bytes(resolution)) if free else most))


@torch.no_grad()
def extract_many(task, z: torch.Tensor, resolution: int = 256, coarse: int = 32, group: int = 0) -> List[tuple]:
    """(vertices, faces, evaluated points) of each code of z (S, Z): coarse-to-fine grids of `group` shapes at once
    (0: extraction_group's; the same grids as one at a time, in fewer and larger decoder calls), then marching cubes
    on the same device (recon3d.geometry.marching: scikit-image's vertices, only the crossed cells visited)."""
    out: List[tuple] = []
    group = group or extraction_group(resolution, z.device)
    for first in range(0, len(z), group):
        codes = z[first:first + group]
        grids = coarse_to_fine_grids(decoder_fields(task, codes), len(codes), resolution,
                                     coarse=min(coarse, resolution), device=z.device, on_device=True)
        out += [(*corner_grid_mesh(grid.values), grid.evaluated) for grid in grids]
    return out


@torch.no_grad()
def extract_mesh(task, z: torch.Tensor, resolution: int = 256, coarse: int = 32):
    """(vertices, faces, evaluated points) of one shape by coarse-to-fine evaluation and marching cubes."""
    return extract_many(task, z[None], resolution, coarse)[0]


@torch.no_grad()
def extract_meshes(ckpt: str | Path, shard_dir: str | Path, out_dir: str | Path, *, split: str = "test",
                   keys: Sequence[str] = (), count: int = 8, resolution: int = 256, fmt: str = "obj",
                   device: str = "cpu") -> List[dict]:
    """Meshes for chosen shapes (by key, or the first `count` of a split); one row per mesh with counts (seconds:
    its share of its batch's extraction)."""
    task = load_autoencoder(ckpt, device)
    rows: List[dict] = []
    splits = schema.SPLITS if keys else (split,)
    for name in splits:
        for batch in iter_split(shard_dir, name, 8):
            chosen = [i for i, key in enumerate(batch["key"]) if key in keys] if keys else \
                list(range(min(len(batch["key"]), count - len(rows))))
            if not chosen:
                continue
            start = time.perf_counter()
            meshes = extract_many(task, task.model.encoder(batch["voxels"][chosen].to(device)), resolution)
            seconds = (time.perf_counter() - start) / len(chosen)
            for i, (verts, faces, evaluated) in zip(chosen, meshes):
                key = batch["key"][i]
                path = save_mesh(Path(out_dir) / f"{key.replace('/', '__')}.{fmt}", verts, faces)
                rows.append({"key": key, "path": str(path), "faces": len(faces), "evaluated": evaluated,
                             "dense": (resolution + 1) ** 3, "seconds": seconds, "mesh": (verts, faces)})
    return rows


@torch.no_grad()
def evaluate(ckpt: str | Path, shard_dir: str | Path, *, split: str = "test", device: str = "cpu",
             out_dir: Optional[str | Path] = None, resolution: int = 128, iou_resolution: int = 0,
             imnet_points: int = 4096, occnet_points: int = 100_000) -> Dict[str, dict]:
    """Per-shape metrics on a split, summarised per category, over categories and over shapes.

    Voxel metrics compare the decoder at the cell centres of an iou_resolution^3 grid (0: the stored grid) with the
    stored voxels pooled to it by majority. Surface metrics
    compare a mesh extracted at `resolution` with the shape's stored surface samples: Chamfer-L2 (IM-NET, x1000)
    on `imnet_points` points per side; Chamfer-L1, normal consistency and F-scores with `occnet_points` points on the
    prediction against all stored ground-truth samples.
    """
    need_shards(shard_dir, "autoencoder")
    task = load_autoencoder(ckpt, device)
    rng = np.random.default_rng(0)
    rows, mean = [], None
    for batch in iter_split(shard_dir, split, 8, surface=True):
        voxels = batch["voxels"].to(device)
        z = task.model.encoder(voxels)
        grid = iou_resolution or voxels.shape[-1]
        occupancy = task.decode_grid(z, grid, inference_dtype(device)).cpu().numpy()
        pooled = pooled_voxels(voxels, grid)
        mean = mean_voxels(shard_dir, grid) if mean is None else mean
        baseline = mean_shape_iou(mean, pooled).cpu().numpy()
        target = pooled.float().cpu().numpy()
        meshes = extract_many(task, z, resolution)
        for i, key in enumerate(batch["key"]):
            row = shape_row(key, **voxel_metrics(occupancy[i], target[i]), iou_mean_shape=float(baseline[i]))
            verts, faces, _ = meshes[i]
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
    return finish_eval(rows, eval_name("autoencoder", split), out_dir, f"{shard_dir} split {split!r}")


def write_sheets(ckpt: str | Path, shard_dir: str | Path, *, split: str, keys: Sequence[str], out_dir: str | Path,
                 device: str = "cpu", resolution: int = 128) -> List[Path]:
    """The shapes `keys` of `split` reconstructed at resolution^3: their meshes in the row's mesh folder and
    autoencoder_sheet.png, each shape's first stored view beside a render of its mesh."""
    out = Path(out_dir)
    folder = out / STAGES["autoencoder"].mesh_folder("Test shapes, reconstructed")
    rows = extract_meshes(ckpt, shard_dir, folder, split=split, keys=keys, resolution=resolution, device=device)
    return [write_sheet(out / "autoencoder_sheet.png", shard_dir, rows)]
