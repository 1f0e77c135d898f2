"""What a trained model is shown at use time: a split's samples in the model's own input conventions (its crop,
channels and held-out views, read from its hyperparameters), photos centre-cropped the same way, the stored
first view of chosen shapes, and which shapes a report's sheets show."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from recon3d.data import schema
from recon3d.data.loading.datamodule import iter_split
from recon3d.data.loading.pipelines import to_float_image
from recon3d.data.loading.shards import load_manifest, read_tar, shard_infos, shard_keys
from recon3d.geometry.render import on_white


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
    hp = task.hparams
    crop = int(hp.get("crop_size", 128))
    image = to_float_image(view, grayscale=int(hp.image_channels) == 1)
    height, width = image.shape[1:]
    y0, x0 = (height - crop) // 2, (width - crop) // 2
    tensor = torch.as_tensor(np.ascontiguousarray(image[:, y0:y0 + crop, x0:x0 + crop]))[None]
    return tensor.to(next(task.parameters()).device)


def input_views(shard_dir: str | Path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """The first stored view of each key, composited on white, (H, W, 3) uint8."""
    wanted, found = set(keys), {}
    for shard in load_manifest(shard_dir)["shards"]:
        for key, members in read_tar(Path(shard_dir) / f"{shard['name']}.tar").items():
            if key in wanted and schema.view_count(members):
                view = schema.view_image(members, 0)
                found[key] = on_white(view[..., 0] if view.shape[-1] == 1 else view)
        if len(found) == len(wanted):
            break
    return found


def split_keys(shard_dir: str | Path, split: str) -> List[str]:
    """A split's keys in manifest order, from the shards' indexes (the tar's headers for a shard without one); a
    missing or damaged shard is left out with a warning, as the loaders leave it out."""
    keys: List[str] = []
    for shard in shard_infos(shard_dir, split):
        keys += shard_keys(shard.path)
    return keys


def sheet_keys(shard_dir: str | Path, split: str, count: int) -> List[str]:
    """`count` keys of a split for a report's sheets, spread over its categories (see schema.take_in_turn)."""
    return schema.take_in_turn(split_keys(shard_dir, split), count)


def pick_batch(shard_dir: str | Path, split: str, keys: Sequence[str], **loader) -> dict:
    """The samples of `keys` from a split as one expanded batch, in the order of `keys`; `loader` keywords as for
    iter_split (see view_options).

    Raises:
        KeyError: a key is not in the split (naming the first such).
    """
    found: Dict[str, dict] = {}
    for batch in iter_split(shard_dir, split, 16, **loader):
        for i, key in enumerate(batch["key"]):
            if key in keys and key not in found:  # an image split may list a shape once per view
                found[key] = {name: value[i] for name, value in batch.items()}
    missing = [key for key in keys if key not in found]
    if missing:
        raise KeyError(f"{shard_dir}: no {missing[0]!r} in the {split} split")
    names = found[keys[0]].keys() if keys else ()
    return {name: torch.stack([found[k][name] for k in keys]) if isinstance(found[keys[0]][name], torch.Tensor)
            else [found[k][name] for k in keys] for name in names}
