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
        # The first convolution (one input channel) runs as the same convolution on 2^3-blocked input
        # (blocked_conv): with 8 channels it is a tensor-core GEMM on a GPU, where cuDNN ran the 1-channel one as a
        # plain sgemm (issue 39's profile), and 1.3-1.4x faster on a CPU (docs/results.md). The weights are the
        # same; the GPU proof times both (benchmarks/gpu_parts.py).
        self.blocked_first_conv = True
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
        if self.blocked_first_conv:
            return self.net[1:](blocked_conv(voxels, self.net[0].weight)).flatten(1)
        return self.net(voxels).flatten(1)


def blocked_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """conv3d(x, weight, stride=2, padding=1) of a 4^3 kernel, computed as a 2^3 kernel at stride 1 over the padded
    input cut into 2^3 blocks (their 8 voxels as channels): out[o] = sum_k x[2o + k] w[k] with k = 2 hi + lo reads
    block o + hi at offset lo. x (B, C, S, S, S) with S even, weight (O, C, 4, 4, 4)."""
    b, c = x.shape[:2]
    x = nn.functional.pad(x, (1,) * 6)
    d, h, w = (n // 2 for n in x.shape[2:])
    x = x.view(b, c, d, 2, h, 2, w, 2).permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, 8 * c, d, h, w)
    out = weight.shape[0]
    kernel = weight.view(out, c, 2, 2, 2, 2, 2, 2).permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(out, 8 * c, 2, 2, 2)
    return nn.functional.conv3d(x, kernel)
