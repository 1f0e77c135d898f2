"""What a trained model is shown at use time: a split's samples in the model's own input conventions (its crop,
channels and held-out views, read from its hyperparameters), photos centre-cropped the same way, and the stored
first view of chosen shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

from recon3d.data import schema
from recon3d.data.shards import load_manifest, read_tar


def view_options(task, stage: str = "image") -> dict:
    """ShardDataModule keywords that show shapes to an image model as in its training and evaluation: its crop,
    channels and held-out views (from the checkpoint's hyperparameters), and for VRN its volume depth."""
    hp = task.hparams
    options = {"stage": stage, "crop_size": int(hp.get("crop_size", 128)), "grayscale": int(hp.image_channels) == 1,
               "holdout_views": int(hp.get("holdout_views", 0))}
    if stage == "volume":
        options["volume_depth"] = int(hp.depth)
    return options


def model_input(view: np.ndarray, task) -> torch.Tensor:
    """(1, C, crop, crop) float tensor of an (S, S, 3) uint8 view on white for an image model, centre-cropped as in
    evaluation (C and crop from the model's hyperparameters), on the model's device."""
    from recon3d.data.pipelines import to_float_image

    hp = task.hparams
    crop = int(hp.get("crop_size", 128))
    image = to_float_image(view, grayscale=int(hp.image_channels) == 1)
    height, width = image.shape[1:]
    y0, x0 = (height - crop) // 2, (width - crop) // 2
    tensor = torch.as_tensor(np.ascontiguousarray(image[:, y0:y0 + crop, x0:x0 + crop]))[None]
    return tensor.to(next(task.parameters()).device)


def input_views(shard_dir: str | Path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """The first stored view of each key, composited on white, (H, W, 3) uint8."""
    from recon3d.geometry.render import on_white

    wanted, found = set(keys), {}
    for shard in load_manifest(shard_dir)["shards"]:
        for key, members in read_tar(Path(shard_dir) / f"{shard['name']}.tar").items():
            if key in wanted and schema.view_count(members):
                view = schema.view_image(members, 0)
                found[key] = on_white(view[..., 0] if view.shape[-1] == 1 else view)
        if len(found) == len(wanted):
            break
    return found
