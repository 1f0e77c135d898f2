"""VRN at use time: per-category IoU of its view-aligned volumes, and meshes from photos placed in the camera's
frame."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recon3d.data.loading.datamodule import iter_split
from recon3d.geometry.camera import volume_cell_points
from recon3d.geometry.extract import grid_to_mesh
from recon3d.inference.mean_shape import mean_shape_iou, mean_volume
from recon3d.inference.outputs import save_png
from recon3d.inference.splits import model_input, pick_batch, view_options
from recon3d.inference.tables import eval_name, finish_eval, need_shards, shape_row
from recon3d.tasks.checkpoints import load_checkpoint
from recon3d.tasks.vrn import volume_iou, volume_sheet

TABLE_COLUMNS = ("shapes", "iou", "iou_mean_shape")
TABLE_NOTE = "IoU of the view-aligned volume in the camera frame, on each shape's evaluation view; iou_mean_shape: " \
             "the mean of the training shapes' volumes, the score of answering one average volume"


def volume_mesh(probabilities: np.ndarray, focal: float, distance: float, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on a view-aligned volume (D, G, G) of probabilities, its cells placed in the camera's frustum
    (focal in pixels of the crop, the volume centred at `distance`); vertices in a Y-up frame centred on the volume
    (x right, y up, z towards the viewer), faces (F, 3). Empty arrays when nothing is occupied."""
    verts, faces = grid_to_mesh(probabilities, 0.5, corners=False)
    if len(faces) == 0:
        return verts, faces
    shape = np.asarray(probabilities.shape, dtype=np.float64)
    cells = (verts + 0.5) * shape - 0.5  # back to cell coordinates (slice, row, column)
    intr = np.array([[focal, 0.0, crop / 2.0], [0.0, focal, crop / 2.0], [0.0, 0.0, 1.0]])
    extr = np.concatenate([np.eye(3), [[0.0], [0.0], [distance]]], axis=1)
    cam = volume_cell_points(cells, intr, extr, crop, probabilities.shape[1], probabilities.shape[0])
    out = np.stack([cam[:, 0], -cam[:, 1], distance - cam[:, 2]], axis=-1).astype(np.float32)
    return out, faces[:, ::-1].copy()  # the y flip mirrors: reverse the winding to keep normals outward


@torch.no_grad()
def vrn_mesh(task, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mesh of one encoder input (1, C, crop, crop) through a VRNTask."""
    probabilities = torch.sigmoid(task.model(image)[-1][0]).cpu().numpy()
    scale = task.hparams.crop_size  # the volume tiles the crop
    return volume_mesh(probabilities, task.hparams.camera_focal, task.hparams.camera_distance, scale)


@torch.no_grad()
def evaluate(ckpt: str | Path, shard_dir: str | Path, *, split: str = "test", device: str = "cpu",
             out_dir: Optional[str | Path] = None, batch_size: int = 16) -> Dict[str, dict]:
    """Per-category IoU of the view-aligned volume on a split's evaluation views (the held-out view when the model
    was trained with holdout_views). Writes eval_vrn_<split>.json/.csv and per-shape rows; returns the summary."""
    need_shards(shard_dir, "vrn")
    task = load_checkpoint(ckpt, device, expect="vrn")
    rows, options = [], view_options(task, "volume")
    mean = mean_volume(shard_dir, **options)
    for batch in iter_split(shard_dir, split, batch_size, **options):
        ious = volume_iou(task.model(batch["image"].to(device))[-1], batch["volume"].to(device))
        baseline = mean_shape_iou(mean, batch["volume"] > 0.5)
        rows += [shape_row(key, view=int(batch["view"][i]), iou=float(ious[i]), iou_mean_shape=float(baseline[i]))
                 for i, key in enumerate(batch["key"])]
    return finish_eval(rows, eval_name("vrn", split), out_dir, f"{shard_dir} split {split!r}")


@torch.no_grad()
def write_sheets(ckpt: str | Path, shard_dir: str | Path, *, split: str, keys: Sequence[str], out_dir: str | Path,
                 device: str = "cpu") -> List[Path]:
    """vrn_sheet.png: the evaluation views of a split's shapes `keys`, input | true depth | predicted depth (the
    nearest occupied slice of the view-aligned volume; brighter is nearer), one shape per line."""
    task = load_checkpoint(ckpt, device, expect="vrn")
    batch = pick_batch(shard_dir, split, keys, **view_options(task, "volume"))
    logits = task.model(batch["image"].to(device))[-1].cpu()
    rows = [(batch["image"][i].mean(0).numpy(), batch["volume"][i].numpy() > 0.5, logits[i].numpy() > 0)
            for i in range(len(batch["key"]))]
    return [save_png(Path(out_dir) / "vrn_sheet.png", volume_sheet(rows))]


def mesh_maker(ckpt: str | Path, resolution: int, device: str) -> Tuple[int, Callable]:
    """(the image size it was trained on, view (S, S, 3) uint8 -> (vertices, faces)) for `recon3d reconstruct`;
    the volume's own grid sets the mesh's resolution."""
    task = load_checkpoint(ckpt, device, expect="vrn")
    return int(task.hparams.image_size), lambda view: vrn_mesh(task, model_input(view, task))
