"""Validation in shape space, shared by the tasks: decode codes on a grid, IoU against voxels, surface scores."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from recon3d.geometry.extract import grid_to_mesh
from recon3d.geometry.metrics import batch_iou, sample_surface, surface_metrics
from recon3d.io import atomic_path, native_bf16
from recon3d.stages import STAGES


def cell_centres(resolution: int, device=None) -> torch.Tensor:
    """(R^3, 3) centres (i + 0.5) / R - 0.5 of a resolution^3 grid, x-major like the stored voxels."""
    axis = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution - 0.5
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def inference_dtype(device) -> torch.dtype:
    """The decoder's precision for extraction and evaluation on `device`: bf16 autocast where the hardware runs bf16
    natively (a CUDA device that supports it; a CPU with avx512_bf16/AMX/Arm bf16), else fp32.
    RECON3D_INFERENCE_DTYPE=fp32 or bf16 overrides."""
    import os

    forced = os.environ.get("RECON3D_INFERENCE_DTYPE", "").lower()
    if forced in ("fp32", "float32", "bf16", "bfloat16"):
        return torch.bfloat16 if forced.startswith("bf") else torch.float32
    return torch.bfloat16 if native_bf16(torch.device(device).type) else torch.float32


def refine_in_fp32(values: torch.Tensor, points: torch.Tensor, run, threshold: float = 0.5,
                   margin: float = 0.01) -> torch.Tensor:
    """values (P,) of a bf16 pass over points (P, 3), with those within `margin` of `threshold` replaced in place by
    run(their points), an fp32 evaluation: bf16 moves a decoder's values by a few hundredths, enough to flip cells
    near the surface and nowhere else."""
    near = ((values - threshold).abs() < margin).nonzero()[:, 0]
    if len(near):
        values[near] = run(points[near])
    return values


@torch.no_grad()
def decode_occupancy(decoder, z: torch.Tensor, resolution: int, chunk: int = 0, dtype: torch.dtype | None = None,
                     margin: float = 0.01) -> torch.Tensor:
    """Occupancy (B, R, R, R) of codes z (B, Z) at the cell centres of a resolution^3 grid.

    Each decoder call takes at most `chunk` points over all codes (0: 8192 on a CPU, 2^19 on a GPU): on 2 CPU cores
    55 codes at 32^3 decoded in 16.4 s as one call per 32768 points of every code, 2.2 s in calls of 8192 points
    (the decoder's per-point activations stay in cache instead of paging through a GB).

    dtype bfloat16 decodes under bf16 autocast and evaluates again in fp32 the points within `margin` of 0.5 (as
    extraction does, inference.autoencoder.decoder_field): 150 GAN codes at 32^3 took 2.2 s instead of 6.6 s on an
    avx512_bf16 CPU. None: the precision of the caller's context.
    """
    if dtype == torch.bfloat16:
        with torch.autocast(z.device.type, dtype=torch.bfloat16):
            values = decode_occupancy(decoder, z, resolution, chunk).float()
        points = cell_centres(resolution, z.device)
        flat = values.reshape(len(z), -1)
        with torch.autocast(z.device.type, enabled=False):
            for b in range(len(z)):  # the few points near the surface, one code at a time
                refine_in_fp32(flat[b], points, lambda p: decoder(p[None], z[b:b + 1].float())[0, :, 0].float(),
                               margin=margin)
        return values
    chunk = chunk or (8192 if z.device.type == "cpu" else 1 << 19)
    points = cell_centres(resolution, z.device).to(z.dtype)  # bf16 codes under DeepSpeed's bf16
    per_call = min(len(points), chunk)
    codes = max(1, chunk // per_call)  # codes per call when a whole grid fits in one
    out = []
    for first in range(0, z.shape[0], codes):
        group = z[first:first + codes]
        out.append(torch.cat([decoder(points[start:start + per_call].expand(group.shape[0], -1, -1), group)[..., 0]
                              for start in range(0, len(points), per_call)], dim=1))
    return torch.cat(out).reshape(z.shape[0], resolution, resolution, resolution)


def decoded_surfaces(decoder, z: torch.Tensor, resolution: int, points: int, rng,
                     dtype: torch.dtype | None = None) -> Tuple[list, list]:
    """Each code's shape decoded on a resolution^3 grid (in `dtype`, see decode_occupancy): its (vertices, faces) by
    marching cubes at 0.5, and `points` samples of its surface (None for an empty shape). What the GAN's validation
    and its test evaluation compare."""
    grids = decode_occupancy(decoder, z, resolution, dtype=dtype).float().cpu().numpy()
    meshes = [grid_to_mesh(grid, 0.5, corners=False) for grid in grids]
    return meshes, [sample_surface(v, f, points, rng)[0] if len(f) else None for v, f in meshes]


def voxel_iou(pred: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    """Per-shape IoU (B,) of occupancy pred (B, r, r, r) against stored voxels (B, 1, R, R, R) pooled to r by majority
    (1 when both are empty); a prediction finer than the stored voxels is pooled to R the same way."""
    factor = voxels.shape[-1] // pred.shape[-1]
    if factor == 0:  # e.g. the image encoder's default 32^3 grid on 16^3 shards
        pred = F.avg_pool3d(pred.float()[:, None], pred.shape[-1] // voxels.shape[-1])[:, 0]
        factor = 1
    target = F.avg_pool3d(voxels.float(), factor)[:, 0] > 0.5  # float: CPU has no bf16 pool
    return batch_iou(pred > 0.5, target).float()


def surface_scores(grids: np.ndarray, surfaces: np.ndarray, points: int = 2048) -> Tuple[List[float], List[float]]:
    """Per shape: Chamfer-L2 x1000 (IM-NET convention) and F-score@1 % between the mesh of each occupancy grid
    (cell centres) and the stored surface samples; NaN and 0 for an empty mesh."""
    rng = np.random.default_rng(0)
    chamfers, fscores = [], []
    for grid, surface in zip(grids, surfaces):
        verts, faces = grid_to_mesh(grid, 0.5, corners=False)
        if len(faces) == 0:
            chamfers.append(float("nan"))
            fscores.append(0.0)
            continue
        pred, _ = sample_surface(verts, faces, points, rng)
        target = surface[rng.choice(len(surface), min(points, len(surface)), replace=False)]
        metrics = surface_metrics(pred, target, thresholds=(0.01,))
        chamfers.append(1000.0 * metrics["chamfer_l2"])
        fscores.append(metrics["fscore@1%"])
    return chamfers, fscores


def publish_image(task, image: np.ndarray, meshes: Sequence = ()) -> None:
    """Save `image` (H, W, 3) uint8 as <run_dir>/<the stage's picture folder>/epoch_NNNN.png and log it with the
    stage's caption to W&B when the run uses it, with `meshes` ((vertices (V, 3), faces (F, 3)) pairs) as 3D
    objects: each saved beside the picture as epoch_NNNN_K.glb, which W&B shows as a mesh. Call on rank 0."""
    from PIL import Image

    row = STAGES[task.stage]
    name, caption = row.pictures, row.picture_caption
    run_dir = task.hparams.get("run_dir", "")
    folder = Path(run_dir) / name if run_dir else None
    if folder is not None:
        with atomic_path(folder / f"epoch_{task.current_epoch:04d}.png", keep_suffix=True) as tmp:
            Image.fromarray(image).save(tmp)
    from lightning.pytorch.loggers import WandbLogger

    for logger in task.loggers:
        if isinstance(logger, WandbLogger):  # recon3d's own is a subclass (SteppedWandbLogger): not by name
            logger.log_image(f"val/{name}", [image], step=task.global_step, caption=[caption])
            files = _mesh_files(folder, task.current_epoch, meshes) if folder is not None else []
            if files:
                import wandb

                logger.experiment.log({f"val/{name}_3d": [wandb.Object3D(str(f)) for f in files]},
                                      step=task.global_step)


def _mesh_files(folder: Path, epoch: int, meshes: Sequence) -> List[Path]:
    """The non-empty meshes as GLB files epoch_NNNN_K.glb in `folder` (written through temp names)."""
    import trimesh

    files = []
    for k, (vertices, faces) in enumerate(meshes):
        if len(faces):
            path = folder / f"epoch_{epoch:04d}_{k}.glb"
            with atomic_path(path, keep_suffix=True) as tmp:
                Path(tmp).write_bytes(trimesh.Trimesh(vertices, faces, process=False).export(file_type="glb"))
            files.append(path)
    return files


class CategoryScores:
    """Per-shape scores collected over an epoch on every rank, then means per category and over categories.

    Categories need not be known in advance: at the end the (category, scores) rows of all ranks are gathered.
    """

    def __init__(self) -> None:
        self.rows: List[Tuple[str, dict]] = []

    def add(self, keys: Sequence[str], **scores: torch.Tensor) -> None:
        values = {name: score.detach().double().cpu().tolist() for name, score in scores.items()}
        for i, key in enumerate(keys):
            self.rows.append((key.split("/")[0], {name: v[i] for name, v in values.items()}))

    def summary(self, prefix: str) -> dict:
        """{prefix/name: mean over categories of the per-category means, prefix/name/category: ...} over all
        ranks (a collective call under DDP: every rank must make it)."""
        rows = self.rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        out = {}
        for name, means in category_means(rows).items():
            out[f"{prefix}/{name}"] = nan_mean(list(means.values()))
            out.update({f"{prefix}/{name}/{c}": m for c, m in means.items() if not np.isnan(m)})
        return out


def category_means(rows: Sequence[Tuple[str, dict]]) -> dict:
    """{score name: {category: mean}} of (category, {name: value}) rows, categories sorted; NaN values (a shape
    without a mesh has no Chamfer distance) are left out, and a category with none gets NaN."""
    by_category: dict = {}
    for category, scores in rows:
        for name, value in scores.items():
            by_category.setdefault(name, {}).setdefault(category, []).append(float(value))
    return {name: {c: nan_mean(v) for c, v in sorted(categories.items())} for name, categories in by_category.items()}


def nan_mean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN; NaN when none is."""
    finite = [float(v) for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
