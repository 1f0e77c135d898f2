"""Decoding shard samples for each loader pipeline (autoencoder, image, volume, stereo): which tar members each
reads, and how a sample becomes arrays (random crops and flips in training, centre crops in evaluation).

Loaders carry voxels, values and point indices as uint8; `expand_batch` turns them into float32 on the device.
"""

from __future__ import annotations

import functools
import random
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from recon3d.data import schema
from recon3d.geometry.camera import view_aligned_occupancy


@functools.lru_cache(maxsize=None)
def autoencoder_members(resolution: int, surface: bool = False, meta: bool = True) -> Callable[[str], bool]:
    """The members the autoencoder stage reads (`meta=False`: the point grid is known from the manifest, as in
    training, so meta.json is not read per sample)."""
    keep = {schema.VOXELS, schema.points_member(resolution), schema.values_member(resolution)}
    keep |= {schema.META} if meta else set()
    if surface:
        keep |= {schema.SURFACE_POINTS, schema.SURFACE_NORMALS}
    return frozenset(keep).__contains__


def image_members(suffix: str) -> bool:
    return not suffix.startswith(("points_", "values_", "surface_", "right_")) and suffix not in (
        schema.VOXELS_FINE, schema.CAMERA_RT_RIGHT, schema.CAMERA_POSE)


def image_train_members(suffix: str) -> bool:
    """What training the image encoder reads: a view and its camera (its targets are latents; voxels only score
    validation)."""
    return suffix in (schema.META, schema.VIEWS, schema.CAMERA_K, schema.CAMERA_RT) or schema.is_view_member(suffix)


def stereo_members(suffix: str) -> bool:
    return suffix.startswith(("view_", "right_")) or suffix in (schema.META, schema.CAMERA_K, schema.CAMERA_RT,
                                                                 schema.VIEWS)


def image_eval_members(suffix: str) -> bool:
    return image_members(suffix) or suffix in (schema.SURFACE_POINTS, schema.SURFACE_NORMALS)


def decode_autoencoder(raw: Dict[str, bytes], resolution: int, points: int, rng: random.Random,
                       point_grid: int = 0) -> dict:
    """Compact arrays (see `expand_batch`): voxel_bits (R, R, R/8) uint8 (the stored bit-packed solid, unpacked on
    the device), point_index (P, 3) uint8 fine-grid indices, point_grid (), and values (P, 1) uint8 for a subset of
    the points or value_bits (ceil(P/8),) uint8 for all of them. Keeping them small makes worker-to-trainer transfer
    and the copy to the GPU cheap (voxels and values 8x less than uint8)."""
    bits = schema.voxel_bits(raw[schema.VOXELS])
    index = schema.load_npy(raw[schema.points_member(resolution)])
    grid = point_grid or schema.sample_point_grid(raw, resolution)
    out = {"key": raw["__key__"], "voxel_bits": bits, "point_grid": np.int32(grid)}
    if points and points < len(index):
        values = schema.unpack_values(raw[schema.values_member(resolution)], len(index))
        keep = np.sort(_numpy_rng(rng).choice(len(index), points, replace=False))
        out["point_index"], out["values"] = index[keep], values[keep][:, None].view(np.uint8)
    else:  # every point: the values stay bit-packed too
        out["point_index"] = index
        out["value_bits"] = schema.value_bits(raw[schema.values_member(resolution)], len(index))
    if schema.SURFACE_POINTS in raw:  # evaluation streams ask for the surface samples (surface metrics)
        out["surface_points"], out["surface_normals"] = schema.unpack_surface(raw)
    return out


def _numpy_rng(rng: random.Random) -> np.random.Generator:
    """A NumPy generator drawn from `rng` (vectorised draws; the stream stays a function of rng's seed)."""
    return np.random.Generator(np.random.PCG64(rng.getrandbits(64)))


def unpack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(..., R/8) uint8 packed along the last axis (np.packbits order) -> (..., R) uint8 in {0, 1}, on any device."""
    shifts = torch.arange(7, -1, -1, device=bits.device, dtype=torch.uint8)
    return ((bits.unsqueeze(-1) >> shifts) & 1).flatten(-2)


def expand_batch(batch: dict) -> dict:
    """Turn a compact batch into model inputs, on whatever device it now lives on (float32 everywhere):
    voxels (B, 1, R, R, R) and volume (B, D, H, W) in {0, 1}; points (B, P, 3) in [-0.5, 0.5]; values (B, P, 1) in
    {0, 1}; image, left, right (B, C, H, W) in [0, 1]."""
    if "voxel_bits" in batch:
        batch["voxels"] = unpack_bits(batch.pop("voxel_bits")).unsqueeze(1)
    if "value_bits" in batch:
        count = batch["point_index"].shape[1]
        batch["values"] = unpack_bits(batch.pop("value_bits"))[:, :count, None]
    if "point_index" in batch:
        grid = batch.pop("point_grid").to(torch.float32).view(-1, 1, 1)
        batch["points"] = (batch.pop("point_index").to(torch.float32) + 0.5) / grid - 0.5
        batch["values"] = batch["values"].to(torch.float32)
    for name in ("voxels", "volume"):
        if name in batch:
            batch[name] = batch[name].to(torch.float32)
    for name in ("image", "left", "right"):
        if name in batch and batch[name].dtype == torch.uint8:
            batch[name] = batch[name].to(torch.float32) / 255.0
    return batch


def to_float_image(image: np.ndarray, grayscale: bool) -> np.ndarray:
    """(C, H, W) float32 in [0, 1] composited over white."""
    img = image.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] in (2, 4):
        alpha = img[..., -1:]
        img = img[..., :-1] * alpha + (1.0 - alpha)
    if grayscale and img.shape[-1] == 3:
        img = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    elif not grayscale and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def crop_view(view: np.ndarray, crop: int, train: bool, grayscale: bool, rng: Optional[random.Random],
              origin: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, Tuple[int, int]]:
    """An (H, W, C) uint8 view cropped (random origin in training, centre in evaluation, or the `origin` given) and
    composited over white: ((C', crop, crop) uint8, (y0, x0)). Done by PIL on the crop only (as `to_float_image`
    would give it x 255, within rounding); loaders carry images as uint8 and `expand_batch` divides by 255."""
    height, width, channels = view.shape
    y0, x0 = origin if origin is not None else _crop_origin(height, width, crop, train, rng)
    patch = np.ascontiguousarray(view[y0:y0 + crop, x0:x0 + crop])
    img = Image.fromarray(patch[..., 0] if channels == 1 else patch, _MODES[channels])
    if channels in (2, 4):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    array = np.asarray(img.convert("L" if grayscale else "RGB"))
    return np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1)), (y0, x0)


def _pick_view(count: int, train: bool, holdout_views: int, rng: random.Random) -> int:
    """Training draws among the first (count - holdout_views) views; evaluation reads view 0, or with
    holdout_views > 0 the last view, one that training never saw."""
    if count <= holdout_views:
        raise ValueError(f"sample has {count} views; {holdout_views} held out leaves none to train on")
    if train:
        return rng.randrange(count - holdout_views)
    return count - 1 if holdout_views else 0


def _crop_origin(height: int, width: int, crop: int, train: bool, rng: random.Random) -> tuple[int, int]:
    if crop > min(height, width):
        raise ValueError(f"crop {crop} larger than the {height}x{width} view")
    if train:
        return rng.randint(0, height - crop), rng.randint(0, width - crop)
    return (height - crop) // 2, (width - crop) // 2


def decode_image(raw: Dict[str, bytes], crop: int, train: bool, flip: bool, grayscale: bool,
                 rng: random.Random, holdout_views: int = 0) -> dict:
    """One view (see `_pick_view`): image (C, crop, crop) uint8 (`crop_view`; `expand_batch` makes it float),
    its index, camera K/[R|t] adjusted for crop and flip, and the voxels (voxel_bits, as the autoencoder stage)."""
    view = _pick_view(schema.view_count(raw), train, holdout_views, rng)
    image, (y0, x0) = crop_view(schema.view_image(raw, view), crop, train, grayscale, rng)
    has_camera = schema.CAMERA_K in raw
    if has_camera:
        k = schema.load_npy(raw[schema.CAMERA_K])[view].copy()
        rt = schema.load_npy(raw[schema.CAMERA_RT])[view]
        k[0, 2] -= x0
        k[1, 2] -= y0
    else:
        k, rt = np.full((3, 3), np.nan, np.float32), np.full((3, 4), np.nan, np.float32)
    if train and flip and rng.random() < 0.5:
        image = image[:, :, ::-1]
        k = k.copy()
        k[0, 0], k[0, 2] = -k[0, 0], crop - k[0, 2]  # u' = crop - u
    out = {"key": raw["__key__"], "image": np.ascontiguousarray(image), "view": view,
           "camera_k": k.astype(np.float32), "camera_rt": rt.astype(np.float32), "has_camera": has_camera}
    if schema.VOXELS in raw:  # not read by image-encoder training (image_train_members)
        out["voxel_bits"] = schema.voxel_bits(raw[schema.VOXELS])
    if schema.SURFACE_POINTS in raw:  # evaluation streams ask for the surface samples (shape-space metrics)
        out["surface_points"], out["surface_normals"] = schema.unpack_surface(raw)
    return out


def decode_volume(raw: Dict[str, bytes], crop: int, train: bool, flip: bool, grayscale: bool, rng: random.Random,
                  holdout_views: int, depth: int) -> dict:
    """A view as `decode_image` gives it, plus volume (depth, crop/4, crop/4) uint8: the shape's occupancy in that
    view's frustum (rows and columns follow the crop, flip included; slices follow camera depth), derived here from
    the stored voxels and camera, so shards need not store it."""
    out = decode_image(raw, crop, train, flip, grayscale, rng, holdout_views)
    if not out["has_camera"]:
        raise ValueError("sample has no cameras: the view-aligned volume needs them")
    voxels = np.unpackbits(out.pop("voxel_bits"), axis=-1).view(bool)
    out["volume"] = view_aligned_occupancy(voxels, out["camera_k"].astype(np.float64),
                                           out["camera_rt"].astype(np.float64), crop, crop // 4,
                                           depth).view(np.uint8)
    return out


def decode_stereo(raw: Dict[str, bytes], crop: int, train: bool, grayscale: bool, rng: random.Random,
                  holdout_views: int = 0) -> dict:
    """A rectified pair: left, right (C, crop, crop) uint8 (float in [0, 1] after `expand_batch`), the same crop of
    both (never flipped: a mirrored pair would be a right/left pair), and mean_disparity (): f * baseline / camera
    distance in pixels, the disparity of the object's centre (the "shift by the mean disparity" baseline)."""
    meta = schema.decode_meta(raw)
    if not meta.get("stereo_baseline"):
        raise ValueError("sample has no right-eye views (shards built with render.stereo_baseline=0)")
    view = _pick_view(schema.view_count(raw), train, holdout_views, rng)
    left, origin = crop_view(schema.view_image(raw, view), crop, train, grayscale, rng)
    right, _ = crop_view(schema.view_image(raw, view, right=True), crop, train, grayscale, None, origin)
    focal = float(schema.load_npy(raw[schema.CAMERA_K])[view][0, 0])
    distance = float(np.linalg.norm(schema.load_npy(raw[schema.CAMERA_RT])[view][:, 3]))
    return {"key": raw["__key__"], "view": view,
            "left": left, "right": right,
            "mean_disparity": np.float32(focal * meta["stereo_baseline"] / distance)}


class AutoencoderDecoder:
    """Picklable per-stage decoder (workers import only this module: no Lightning in worker start-up)."""

    def __init__(self, resolution: int, points: int, point_grid: int = 0) -> None:
        self.resolution, self.points, self.point_grid = resolution, points, point_grid

    def __call__(self, raw: dict, rng: random.Random, train: bool) -> dict:
        # evaluation subsets are fixed per shape, so metrics compare like with like across epochs
        return decode_autoencoder(raw, self.resolution, self.points, rng if train else random.Random(raw["__key__"]),
                                  self.point_grid)


class ImageDecoder:
    def __init__(self, crop: int, flip: bool, grayscale: bool, holdout_views: int = 0) -> None:
        self.crop, self.flip, self.grayscale, self.holdout_views = crop, flip, grayscale, holdout_views

    def __call__(self, raw: dict, rng: random.Random, train: bool) -> dict:
        return decode_image(raw, self.crop, train, self.flip, self.grayscale, rng, self.holdout_views)


class VolumeDecoder(ImageDecoder):
    def __init__(self, crop: int, flip: bool, grayscale: bool, holdout_views: int, depth: int) -> None:
        super().__init__(crop, flip, grayscale, holdout_views)
        self.depth = depth

    def __call__(self, raw: dict, rng: random.Random, train: bool) -> dict:
        return decode_volume(raw, self.crop, train, self.flip, self.grayscale, rng, self.holdout_views, self.depth)


class StereoDecoder:
    def __init__(self, crop: int, grayscale: bool, holdout_views: int = 0) -> None:
        self.crop, self.grayscale, self.holdout_views = crop, grayscale, holdout_views

    def __call__(self, raw: dict, rng: random.Random, train: bool) -> dict:
        return decode_stereo(raw, self.crop, train, self.grayscale, rng, self.holdout_views)

