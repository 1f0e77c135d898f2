"""IM-NET's implicit decoder: f(point, z) -> occupancy."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

OUTPUTS = ("sigmoid", "leaky_clip")


def leaky_clip(x: torch.Tensor) -> torch.Tensor:
    """IM-NET's output: identity on [0, 1], slope 0.01 below 0 and above 1."""
    return torch.maximum(torch.minimum(x, 0.01 * x + 0.99), 0.01 * x)


class ImplicitDecoder(nn.Module):
    """An MLP on [point, z] with leaky ReLU (slope 0.02) between layers.

    Args:
        latent_dim: Z.
        decoder_widths: hidden layer widths; the improved IM-NET uses 1024-1024-1024-512-256-128.
        decoder_output: IM-NET's "leaky_clip" (identity in [0, 1] with slope 0.01 outside), or "sigmoid". With a
            sigmoid, a decoder pushed toward "empty" early (most points are outside) saturates near 0 and stops
            learning; the leaky clip keeps a gradient there.
    """

    def __init__(self, *, latent_dim: int = 256, decoder_widths: Sequence[int] = (1024, 1024, 1024, 512, 256, 128),
                 decoder_output: str = "leaky_clip") -> None:
        super().__init__()
        if decoder_output not in OUTPUTS:
            raise ValueError(f"decoder_output must be one of {OUTPUTS}, got {decoder_output!r}")
        self.latent_dim = latent_dim
        self.output = decoder_output
        widths = [3 + latent_dim, *decoder_widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.last = nn.Linear(widths[-1], 1)
        # Variance-preserving init instead of IM-NET's N(0, 0.02): with 0.02 each layer scales activations by about
        # sqrt(width) * 0.02 (0.3 at width 256), so narrow decoders start with vanishing signals and sat at the
        # "mean shape" for hundreds of steps in our tests; Kaiming init fitted the same shapes in ~100 steps.
        for layer in self.hidden:
            nn.init.kaiming_uniform_(layer.weight, a=0.02, nonlinearity="leaky_relu")
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.last.weight, 1e-5, 0.02)
        nn.init.zeros_(self.last.bias)

    def forward(self, points: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """points (B, P, 3) in [-0.5, 0.5], z (B, Z) -> occupancy (B, P, 1) in [0, 1] (leaky_clip: about)."""
        if points.ndim != 3 or points.shape[-1] != 3 or z.ndim != 2 or z.shape[0] != points.shape[0] \
                or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected points (B, P, 3) and z (B, {self.latent_dim}), "
                             f"got {tuple(points.shape)} and {tuple(z.shape)}")
        # The first layer on [point, z] split in two: W [p; z] + b = W_p p + (W_z z + b). The z part is computed once
        # per shape instead of once per point (the same function and weights, without a (B, P, 3 + Z) concatenation).
        # Under bf16 (autocast or bf16 weights) the first and last layers still run in fp32: in bf16 a coordinate
        # in [-0.5, 0.5] keeps 8 bits (steps of 1/512, half a cell of a 256^3 grid) and the output +-0.03 near the
        # 0.5 threshold; both layers are about 0.1 % of the FLOPs.
        first, kind = self.hidden[0], points.device.type
        with torch.autocast(kind, enabled=False):
            weight = first.weight.float()
            per_shape = torch.addmm(first.bias.float(), z.float(), weight[:, 3:].t())  # (B, H)
            x = torch.baddbmm(per_shape[:, None, :], points.float(), weight[:, :3].t().expand(points.shape[0], -1, -1))
        x = x.to(torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else first.weight.dtype)
        x = nn.functional.leaky_relu_(x, 0.02)
        for layer in self.hidden[1:]:
            x = nn.functional.leaky_relu_(layer(x), 0.02)
        with torch.autocast(kind, enabled=False):
            x = nn.functional.linear(x.float(), self.last.weight.float(), self.last.bias.float())
        if self.output == "sigmoid":
            return torch.sigmoid(x)
        return leaky_clip(x)


class Autoencoder(nn.Module):
    """Encoder + decoder, so that one module holds both (checkpoints, export, extraction)."""

    def __init__(self, *, latent_dim: int = 256, encoder_channels: int = 32, resolution: int = 64,
                 decoder_widths: Sequence[int] = (1024, 1024, 1024, 512, 256, 128),
                 decoder_output: str = "leaky_clip") -> None:
        super().__init__()
        from recon3d.models.voxel_encoder import VoxelEncoder

        self.encoder = VoxelEncoder(latent_dim=latent_dim, encoder_channels=encoder_channels, resolution=resolution)
        self.decoder = ImplicitDecoder(latent_dim=latent_dim, decoder_widths=decoder_widths,
                                       decoder_output=decoder_output)

    def forward(self, voxels: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.decoder(points, self.encoder(voxels))
