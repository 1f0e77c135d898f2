"""Using a trained image encoder (SVR): evaluate it in shape space per category, turn a photo into a mesh, and
show held-out views beside the shapes predicted from them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recon3d.data.loading.datamodule import iter_split
from recon3d.inference.autoencoder import extract_many, extract_mesh
from recon3d.inference.mean_shape import mean_shape_iou, mean_voxels, pooled_voxels
from recon3d.inference.outputs import write_pairs
from recon3d.inference.splits import model_input, pick_batch, view_options
from recon3d.inference.tables import eval_name, finish_eval, need_shards, shape_row
from recon3d.tasks.checkpoints import load_with_autoencoder
from recon3d.tasks.decoding import decode_occupancy, inference_dtype
from recon3d.tasks.scores import surface_scores, voxel_iou

TABLE_COLUMNS = ("shapes", "iou", "iou_mean_shape", "chamfer_l2_x1000", "fscore@1%", "latent_mse")
TABLE_NOTE = "one view per shape (a held-out one when the encoder was trained with loader.holdout_views); " \
             "iou_mean_shape: the training set's mean shape, the score of answering one average shape"


def load_svr(ckpt: str | Path, device: str = "cpu"):
    """(image-encoder task, its autoencoder task) of an SVR checkpoint (which carries its autoencoder)."""
    return load_with_autoencoder(ckpt, device, expect="svr")


@torch.no_grad()
def evaluate(ckpt: str | Path, shard_dir: str | Path, *, split: str = "test", device: str = "cpu",
             out_dir: Optional[str | Path] = None, resolution: int = 32) -> Dict[str, dict]:
    """Single-view reconstruction measured in shape space, per category: each shape of `split` seen through one view
    (a held-out one when the encoder was trained with loader.holdout_views), its predicted code decoded at
    resolution^3. Voxel IoU against the stored voxels pooled to that grid; Chamfer-L2 x1000 (IM-NET) and F-score@1 %
    against the stored surface samples; latent MSE against the autoencoder's own code of the shape."""
    need_shards(shard_dir, "svr")
    svr, autoencoder = load_svr(ckpt, device)
    rows, mean = [], None
    for batch in iter_split(shard_dir, split, 8, surface=True, **view_options(svr)):
        z = svr.encoder(batch["image"].to(device))
        target = autoencoder.model.encoder(batch["voxels"].to(device))
        pred = decode_occupancy(autoencoder.model.decoder, z, resolution, dtype=inference_dtype(device))
        iou = voxel_iou(pred, batch["voxels"].to(device)).cpu().numpy()
        grid = min(resolution, batch["voxels"].shape[-1])  # the grid voxel_iou compares on
        mean = mean_voxels(shard_dir, grid) if mean is None else mean
        baseline = mean_shape_iou(mean, pooled_voxels(batch["voxels"], grid)).numpy()
        chamfers, fscores = surface_scores(pred.float().cpu().numpy(), batch["surface_points"].numpy())
        mse = ((z - target) ** 2).mean(1).cpu().numpy()
        rows += [shape_row(key, view=int(batch["view"][i]), iou=float(iou[i]), iou_mean_shape=float(baseline[i]),
                           chamfer_l2_x1000=chamfers[i],
                           **{"fscore@1%": fscores[i]}, latent_mse=float(mse[i]))
                 for i, key in enumerate(batch["key"])]
    return finish_eval(rows, eval_name("svr", split), out_dir, f"{shard_dir} split {split!r}")


def mesh_maker(ckpt: str | Path, resolution: int, device: str) -> Tuple[int, Callable]:
    """(the image size it was trained on, view (S, S, 3) uint8 -> (vertices, faces)) for `recon3d reconstruct`."""
    svr, autoencoder = load_svr(ckpt, device)

    def make(view: np.ndarray):
        return extract_mesh(autoencoder, svr.encoder(model_input(view, svr))[0], resolution)[:2]

    return int(svr.hparams.get("image_size", 137)), make


@torch.no_grad()
def write_sheets(ckpt: str | Path, shard_dir: str | Path, *, split: str, keys: Sequence[str], out_dir: str | Path,
                 device: str = "cpu", resolution: int = 32) -> List[Path]:
    """svr_sheet.png: the evaluation views (held-out ones) of a split's shapes `keys` beside the shapes the image
    encoder predicts from them, extracted at resolution^3."""
    svr, autoencoder = load_svr(ckpt, device)
    batch = pick_batch(shard_dir, split, keys, **view_options(svr))
    meshes = extract_many(autoencoder, svr.encoder(batch["image"].to(device)), resolution)
    rows, lefts = [], {}
    for key, image, (verts, faces, _) in zip(batch["key"], batch["image"], meshes):
        lefts[key] = (image.expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        rows.append({"name": key, "mesh": (verts, faces)})
    return [write_pairs(Path(out_dir) / "svr_sheet.png", rows, lefts)]
