"""Deep3D's view synthesis: the right view as a per-pixel mixture of shifted copies of the left view.

Xie et al. 2016 (Deep3D) predict, for every pixel, a softmax over D disparity planes from features at several
scales and from the whole image (their VGG's fully connected layers), and render the right view with a
differentiable selection layer: right(x, y) = sum_d p_d(x, y) * left(x + d, y). The only supervision is the right
view (L1), so the disparities are learnt without ground truth; the expected disparity sum_d p_d d comes out as a
by-product.

Here the whole-image branch is a linear map of the deepest features averaged over the image: it gives every pixel
the same logits, the scene's disparity (how far the camera is), which no convolution's window can see. The scales'
logits are summed at half resolution, sharpened there by two convolutions that also see the image, and upsampled:
the same planes at a quarter of the full-resolution cost.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List

import torch
from torch import nn
from torch.nn import functional as F


def shifted_views(image: torch.Tensor, disparities: List[float]) -> Iterator[torch.Tensor]:
    """image(x + d) along the last axis for each d, each the image's shape: fractional d by linear interpolation,
    beyond the border the edge column repeats. Slices of one padded copy, no gather: autograd's backward is a few
    additions, not the scatter of an index (several times faster on a CPU; docs/results.md, Deep3D)."""
    width, lows = image.shape[-1], [math.floor(d) for d in disparities]
    left, right = max(0, -min(lows)), max(0, max(lows) + 1)
    pad = F.pad(image.reshape(-1, 1, width), (left, right), mode="replicate").reshape(*image.shape[:-1], -1)
    for disparity, low in zip(disparities, lows):
        start, frac = left + low, disparity - low
        view = pad[..., start:start + width]
        yield view if frac == 0 else view * (1 - frac) + pad[..., start + 1:start + 1 + width] * frac


def select_disparity(image: torch.Tensor, probs: torch.Tensor, disparities: torch.Tensor) -> torch.Tensor:
    """Deep3D's selection layer: (B, C, H, W) = sum_d probs[:, d] * image shifted by disparities[d].

    Args:
        image: (B, C, H, W) the left view.
        probs: (B, D, H, W) per-pixel weights of the disparity planes (a softmax over D).
        disparities: (D,) pixels; right(x) = left(x + d).

    Raises:
        ValueError: the shapes do not agree.
    """
    if image.ndim != 4 or probs.ndim != 4 or image.shape[0] != probs.shape[0] or \
            image.shape[-2:] != probs.shape[-2:] or probs.shape[1] != len(disparities):
        raise ValueError(f"image (B, C, H, W) {tuple(image.shape)}, probs (B, D, H, W) {tuple(probs.shape)} and "
                         f"disparities (D,) {tuple(disparities.shape)} do not agree")
    right = 0.0  # unbind, not slices: a slice's backward fills a zero tensor of all D planes, once per plane
    for weight, shifted in zip(probs.unbind(1), shifted_views(image, disparities.tolist())):
        right = right + shifted * weight[:, None]
    return right


class StereoViewSynthesizer(nn.Module):
    """Left view (B, C, H, W) -> right view, disparity planes' softmax and expected disparity (pixels)."""

    def __init__(self, *, image_channels: int = 1, disparity_levels: int = 33, disparity_min: float = 0.0,
                 disparity_max: float = 16.0, widths: List[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.register_buffer("disparities", torch.linspace(disparity_min, disparity_max, disparity_levels),
                             persistent=False)
        stages, heads, channels = [], [], image_channels
        for width in widths:
            stages.append(nn.Sequential(nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width),
                                        nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1),
                                        nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
            heads.append(nn.Conv2d(width, disparity_levels, 1))
            channels = width
        self.stages, self.heads = nn.ModuleList(stages), nn.ModuleList(heads)
        self.scene = nn.Linear(channels, disparity_levels)  # the whole-image branch
        # the image itself sharpens the plane boundaries (Deep3D's last layers)
        self.refine = nn.Sequential(nn.Conv2d(disparity_levels + image_channels, disparity_levels, 3, padding=1),
                                    nn.ReLU(inplace=True), nn.Conv2d(disparity_levels, disparity_levels, 3, padding=1))

    def plane_logits(self, left: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) logits of the disparity planes."""
        logits, x, size = 0.0, left, None
        for stage, head in zip(self.stages, self.heads):
            x = stage(x)
            size = size or x.shape[-2:]  # the first stage's: half resolution
            logits = logits + F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
        logits = logits + self.scene(x.mean(dim=(2, 3)))[:, :, None, None]
        logits = logits + self.refine(torch.cat([logits, F.adaptive_avg_pool2d(left, size)], dim=1))
        return F.interpolate(logits, size=left.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, left: torch.Tensor) -> Dict[str, torch.Tensor]:
        """right (B, C, H, W), probs (B, D, H, W), disparity (B, H, W) in pixels.

        Raises:
            ValueError: left is not (B, C, H, W) with the model's channels.
        """
        if left.ndim != 4 or left.shape[1] != self.stages[0][0].in_channels:
            raise ValueError(f"left must be (B, {self.stages[0][0].in_channels}, H, W), got {tuple(left.shape)}")
        probs = torch.softmax(self.plane_logits(left), dim=1)
        return {"right": select_disparity(left, probs, self.disparities), "probs": probs,
                "disparity": (probs * self.disparities[None, :, None, None]).sum(1)}
