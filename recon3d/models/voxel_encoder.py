"""IM-NET's 3D CNN encoder: a solid voxel grid -> a latent code z in (0, 1)."""

from __future__ import annotations

import math

import torch
from torch import nn


class VoxelEncoder(nn.Module):
    """Stride-2 3D convolutions down to 4^3, then a 4^3 convolution to `latent_dim` values and a sigmoid.

    Args:
        latent_dim: Z, the size of the code.
        encoder_channels: channels of the first convolution; each further level doubles them.
        resolution: R, the input grid side (a power of two >= 8).
    """

    def __init__(self, *, latent_dim: int = 256, encoder_channels: int = 32, resolution: int = 64) -> None:
        super().__init__()
        levels = int(round(math.log2(resolution / 4)))
        if resolution < 8 or 4 * 2**levels != resolution:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.resolution = resolution
        layers, channels = [], 1
        for level in range(levels):
            out = encoder_channels * 2**level
            layers += [nn.Conv3d(channels, out, 4, stride=2, padding=1, bias=False),
                       nn.InstanceNorm3d(out, affine=True), nn.LeakyReLU(0.02)]
            channels = out
        layers += [nn.Conv3d(channels, latent_dim, 4, stride=1, padding=0), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        """voxels (B, 1, R, R, R) float in [0, 1] -> z (B, Z) in (0, 1)."""
        if voxels.ndim != 5 or voxels.shape[1] != 1 or tuple(voxels.shape[2:]) != (self.resolution,) * 3:
            raise ValueError(f"expected voxels (B, 1, {self.resolution}, {self.resolution}, {self.resolution}), "
                             f"got {tuple(voxels.shape)}")
        return self.net(voxels).flatten(1)
