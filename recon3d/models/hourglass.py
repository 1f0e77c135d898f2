"""VRN's volumetric regression network: stacked hourglasses from an image to a view-aligned occupancy volume.

Jackson et al. 2017 (VRN) regress a volume whose rows and columns are the image's and whose channels are depth
slices, with stacked hourglasses (Newell et al. 2016) and supervision after every stack. Here: a stem takes the
image to a quarter-resolution feature grid (stride-2 convolution, residual block, max-pool), each hourglass
recurses `levels` times (pool, residual, recurse, upsample, add the skip branch), and a 1x1 head per stack gives
`depth` logits per cell; the next stack sees the features plus the re-embedded logits.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn
from torch.nn import functional as F


class Residual(nn.Module):
    """Pre-activation bottleneck residual block (BN-ReLU-conv, 1x1 -> 3x3 -> 1x1)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(out_channels // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), nn.Conv2d(in_channels, mid, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, out_channels, 1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class Hourglass(nn.Module):
    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.skip = Residual(channels, channels)
        self.down = Residual(channels, channels)
        self.inner = Hourglass(channels, levels - 1) if levels > 1 else Residual(channels, channels)
        self.up = Residual(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        return self.skip(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


class HourglassVolumeRegressor(nn.Module):
    """Image (B, C, H, W) -> per-stack logits (B, D, H/4, W/4): occupancy of D depth slices per image cell."""

    def __init__(self, *, image_channels: int = 1, depth: int = 32, stacks: int = 2, width: int = 128,
                 hourglass_levels: int = 3) -> None:
        super().__init__()
        self.depth = depth
        self.stem = nn.Sequential(nn.Conv2d(image_channels, width // 2, 7, stride=2, padding=3),
                                  nn.BatchNorm2d(width // 2), nn.ReLU(inplace=True),
                                  Residual(width // 2, width), nn.MaxPool2d(2), Residual(width, width))
        self.hourglasses = nn.ModuleList([Hourglass(width, hourglass_levels) for _ in range(stacks)])
        self.features = nn.ModuleList([nn.Sequential(Residual(width, width), nn.Conv2d(width, width, 1),
                                                     nn.BatchNorm2d(width), nn.ReLU(inplace=True))
                                       for _ in range(stacks)])
        self.heads = nn.ModuleList([nn.Conv2d(width, depth, 1) for _ in range(stacks)])
        self.merge_features = nn.ModuleList([nn.Conv2d(width, width, 1) for _ in range(stacks - 1)])
        self.merge_logits = nn.ModuleList([nn.Conv2d(depth, width, 1) for _ in range(stacks - 1)])

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        """Logits of every stack (the last is the prediction; all are supervised).

        Raises:
            ValueError: the image is not (B, C, H, W) with H and W multiples of 4 * 2^levels.
        """
        if image.ndim != 4 or image.shape[1] != self.stem[0].in_channels:
            raise ValueError(f"image must be (B, {self.stem[0].in_channels}, H, W), got {tuple(image.shape)}")
        x = self.stem(image)
        outputs = []
        for i, hourglass in enumerate(self.hourglasses):
            features = self.features[i](hourglass(x))
            logits = self.heads[i](features)
            outputs.append(logits)
            if i < len(self.merge_features):
                x = x + self.merge_features[i](features) + self.merge_logits[i](logits)
        return outputs
