"""A user's photo or render -> a view framed like the training renders: object isolated on white, centred, scaled.

The object mask comes from the alpha channel when the image has one; otherwise the background is estimated from the
image border (a plain backdrop): pixels that differ from the border's median colour by more than the border's own
spread are the object. The object's bounding box is then centred and scaled so that its longer side fills `fill` of
the frame (0.7: the median of the training renders, docs/results.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

FILL = 0.7
Photo = Union[str, Path, Image.Image, np.ndarray]  # a file, a PIL image, or (H, W[, 3 or 4]) uint8 pixels
MAX_PIXELS = 100_000_000  # a photo larger than this (100 MP: a medium-format camera's) is refused from its header
WORK_SIDE = 2048  # JPEGs are decoded at a reduced scale down to about this longer side (the frame is 137 px)


def _rgba_of(image: Image.Image) -> Tuple[np.ndarray, bool]:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    return np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0, has_alpha


def _load_rgba(source: Photo) -> Tuple[np.ndarray, bool]:
    """(H, W, 4) float32 in [0, 1] and whether the image carried transparency."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in
                                                                      (3, 4)):
            raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4) uint8, got {source.shape} "
                             f"{source.dtype}")
        rgba, has_alpha = _rgba_of(Image.fromarray(source))
    elif isinstance(source, Image.Image):
        rgba, has_alpha = _rgba_of(source)
    else:
        try:
            with Image.open(source) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:  # from the header, before anything is decoded
                    raise ValueError(f"{source}: {width}x{height} px ({width * height / 1e6:.0f} MP) is more than "
                                     f"a photo needs; at most {MAX_PIXELS / 1e6:.0f} MP (scale it down first)")
                image.draft(image.mode, (WORK_SIDE, WORK_SIDE))  # JPEG: decoded at 1/2..1/8 scale; others as they are
                image.load()
                rgba, has_alpha = _rgba_of(image)
        except Image.DecompressionBombError as err:  # PIL's own refusal, at twice its warning size
            raise ValueError(f"{source}: more than a photo needs ({err})") from None
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{source}: not a readable image ({err})") from None
    if min(rgba.shape[:2]) < 8:
        raise ValueError(f"{_name(source)}: {rgba.shape[1]}x{rgba.shape[0]} px is too small")
    return rgba, has_alpha


def _name(source: Photo) -> str:
    return str(source) if isinstance(source, (str, Path)) else "image"


def border_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool object mask of an image on a plain background, estimated from a 2-pixel border ring."""
    ring = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3), rgb[:, :2].reshape(-1, 3),
                           rgb[:, -2:].reshape(-1, 3)])
    background = np.median(ring, axis=0)
    distance = np.abs(rgb - background).max(axis=-1)
    ring_distance = np.abs(ring - background).max(axis=-1)
    tolerance = max(0.05, 2.0 * float(np.percentile(ring_distance, 95)))
    mask = ndimage.binary_opening(distance > tolerance, iterations=1)
    labels, count = ndimage.label(mask)
    if count > 1:  # drop specks: keep components of at least 2 % of the largest
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.02 * sizes.max()))
    return mask


def frame_object(rgb: np.ndarray, alpha: np.ndarray, size: int, fill: float = FILL) -> np.ndarray:
    """Centre the object's bounding box, scale its longer side to `fill` x size, composite on white:
    (size, size, 3) uint8."""
    ys, xs = np.nonzero(alpha > 0.5)
    centre_y, centre_x = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / fill
    scale = size / side
    composite = rgb * alpha[..., None] + (1 - alpha[..., None])  # on white
    # the affine map from output pixels to input pixels: x_in = (x_out - size/2) / scale + centre
    image = Image.fromarray((composite * 255 + 0.5).astype(np.uint8))
    coefficients = (1 / scale, 0, centre_x - size / 2 / scale, 0, 1 / scale, centre_y - size / 2 / scale)
    return np.asarray(image.transform((size, size), Image.Transform.AFFINE, coefficients,
                                      resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)))


def prepare_photo(source: Photo, size: int = 137, fill: float = FILL) -> np.ndarray:
    """An image (a PNG/JPG/... file, a PIL image or uint8 pixels; any size) -> (size, size, 3) uint8 view framed like
    the training renders.

    Raises:
        ValueError: not an image, tiny, or no object could be told from the background (naming the file).
    """
    path = _name(source)
    rgba, has_alpha = _load_rgba(source)
    rgb = rgba[..., :3]
    if has_alpha and (rgba[..., 3] < 0.5).any():
        alpha = rgba[..., 3]
    else:
        alpha = border_mask(rgb).astype(np.float32)
    if (alpha > 0.5).sum() < 16:
        raise ValueError(f"{path}: found no object (transparent everywhere, or the background covers the image)")
    if (alpha > 0.5).mean() > 0.95:
        raise ValueError(f"{path}: the object covers the whole image; give a photo on a plain background "
                         f"or with transparency")
    return frame_object(rgb, alpha, size, fill)
