"""`recon3d shards show`: a contact sheet PNG of a few samples so that a person can eyeball the data.

One row per sample: its key, a few views composited on white, then the solid voxels seen along X, Y and Z (depth-
shaded projections) and one middle slice, all at the view size.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image, ImageDraw

from recon3d.data import schema
from recon3d.data.loading.shards import load_manifest, read_tar, shard_keys
from recon3d.files import atomic_path
from recon3d.geometry.render import on_white

_LABEL_H = 14


def voxel_projection(voxels: np.ndarray, axis: int) -> np.ndarray:
    """(R, R) uint8 image of a boolean grid seen along `axis` (0 = x, 1 = y, 2 = z), nearer voxels darker.

    Rows go top to bottom along -Y (or -Z when looking down Y), so the object stands upright.
    """
    r = voxels.shape[0]
    moved = np.moveaxis(voxels, axis, 0)  # depth first
    hit = moved.any(axis=0)
    depth = np.argmax(moved, axis=0)
    shade = np.where(hit, 40 + 160 * depth / max(r - 1, 1), 255).astype(np.uint8)
    if axis == 0:  # remaining axes (y, z): show z across, y up
        shade = shade[::-1]
    elif axis == 1:  # (x, z): x across, z down
        shade = shade.T
    else:  # (x, y): x across, y up
        shade = shade.T[::-1]
    return shade


def _tile(gray: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(gray).resize((size, size), Image.NEAREST)
    return np.repeat(np.asarray(img)[..., None], 3, axis=-1)


def _squeeze(view: np.ndarray) -> np.ndarray:
    return view[..., 0] if view.shape[-1] == 1 else view


def sample_row(key: str, members: dict, views: int, size: int) -> np.ndarray:
    count = schema.view_count(members)
    picks = np.linspace(0, count - 1, min(views, count)).astype(int) if count else []
    tiles = [on_white(np.asarray(Image.fromarray(_squeeze(schema.view_image(members, int(i)))).resize((size, size))))
             for i in picks]
    tiles += [np.full((size, size, 3), 255, np.uint8)] * (views - len(tiles))
    voxels = schema.unpack_voxels(members[schema.VOXELS])
    tiles += [_tile(voxel_projection(voxels, axis), size) for axis in (0, 1, 2)]
    middle = (~voxels[:, :, voxels.shape[2] // 2]).astype(np.uint8).T[::-1] * 255
    tiles.append(_tile(middle, size))
    row = np.concatenate(tiles, axis=1)
    label = Image.new("RGB", (row.shape[1], _LABEL_H), "white")
    ImageDraw.Draw(label).text((2, 1), key, fill="black")
    return np.concatenate([np.asarray(label), row], axis=0)


def sheet_samples(shard_dir: Path, count: int, split: str = "") -> List[tuple]:
    """(key, members) of `count` samples taken in turn from each category of the shards (or of one split), in shard
    order. They are chosen from the shards' keys (shard_keys: their indexes), so a shard set written category by
    category still shows every category, and only the shards holding them are read whole; a shard that cannot be
    read is skipped with a line naming it."""
    manifest = load_manifest(shard_dir)
    keys_of: Dict[Path, List[str]] = {}
    for shard in manifest["shards"]:
        if split and shard["split"] != split:
            continue
        path = shard_dir / f"{shard['name']}.tar"
        try:
            keys_of[path] = shard_keys(path)
        except (OSError, EOFError, ValueError, tarfile.TarError) as err:
            print(f"recon3d: {path}: unreadable ({err}); skipped", file=sys.stderr)
    chosen = set(schema.take_in_turn([key for keys in keys_of.values() for key in keys], count))
    picked: List[tuple] = []
    for path, keys in keys_of.items():
        wanted = [key for key in keys if key in chosen]
        if not wanted:
            continue
        try:
            samples = read_tar(path)
        except (OSError, EOFError, tarfile.TarError) as err:
            print(f"recon3d: {path}: unreadable ({err}); skipped", file=sys.stderr)
            continue
        picked += [(key, samples[key]) for key in wanted if key in samples]
    return picked


def contact_sheet(shard_dir: str | Path, out: str | Path, *, count: int = 8, views: int = 4, size: int = 96,
                  split: str = "") -> Path:
    """Write a PNG of `count` samples taken in turn from each category (see sheet_samples) and return its path. A
    shard that cannot be read or a sample that cannot be drawn is skipped with a line naming it."""
    shard_dir, out = Path(shard_dir), Path(out)
    rows = []
    for key, members in sheet_samples(shard_dir, count, split):
        try:
            rows.append(sample_row(key, members, views, size))
        except Exception as err:  # a damaged member: show the others
            print(f"recon3d: sample {key!r}: cannot be drawn ({type(err).__name__}: {err}); skipped", file=sys.stderr)
    if not rows:
        raise ValueError(f"{shard_dir}: no samples to show")
    with atomic_path(out, keep_suffix=True) as tmp:
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp)
    return out
