"""A user's photo or render -> a view framed like the training renders: object isolated on white, centred, scaled.

The object mask comes from the alpha channel when the image has one; otherwise the background is estimated from the
image border (a plain backdrop): pixels that differ from the border's median colour by more than the border's own
spread are the object. The object's bounding box is then centred and scaled so that its longer side fills `fill` of
the frame (0.7: the median of the training renders, docs/results.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

FILL = 0.7


def _load_rgba(path: Path) -> Tuple[np.ndarray, bool]:
    """(H, W, 4) float32 in [0, 1] and whether the file carried transparency."""
    try:
        with Image.open(path) as image:
            image.load()
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None
    if min(rgba.shape[:2]) < 8:
        raise ValueError(f"{path}: {rgba.shape[1]}x{rgba.shape[0]} px is too small")
    return rgba, has_alpha


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


def prepare_photo(path: str | Path, size: int = 137, fill: float = FILL) -> np.ndarray:
    """An image file (PNG/JPG/..., any size) -> (size, size, 3) uint8 view framed like the training renders.

    Raises:
        ValueError: the file is not an image, is tiny, or no object could be told from the background.
    """
    path = Path(path)
    rgba, has_alpha = _load_rgba(path)
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
