"""IM-NET's implicit decoder: f(point, z) -> occupancy."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recon3d.models.voxel_encoder import VoxelEncoder

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
        point_octaves: K > 0 feeds the first layer sin(2^k pi x) and cos(2^k pi x), k < K, of each coordinate beside
            the coordinates (NeRF's positional encoding); 0 is IM-NET's decoder on raw coordinates. A ReLU MLP on raw
            coordinates learns thin parts late: on the demo's shapes four table legs (5 of 64 voxels wide) appeared
            after ~2,500 steps on one table alone and never within the demo's time on 110 shapes; with K = 4 they
            appear within minutes (see point_features).
    """

    def __init__(self, *, latent_dim: int = 256, decoder_widths: Sequence[int] = (1024, 1024, 1024, 512, 256, 128),
                 decoder_output: str = "leaky_clip", point_octaves: int = 0) -> None:
        super().__init__()
        if decoder_output not in OUTPUTS:
            raise ValueError(f"decoder_output must be one of {OUTPUTS}, got {decoder_output!r}")
        if not 0 <= point_octaves <= 16:
            raise ValueError(f"point_octaves must be in 0..16, got {point_octaves}")
        self.latent_dim = latent_dim
        self.output = decoder_output
        self.point_octaves = point_octaves
        self.point_dim = 3 * (1 + 2 * point_octaves)
        widths = [self.point_dim + latent_dim, *decoder_widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.last = nn.Linear(widths[-1], 1)
        # Variance-preserving init instead of IM-NET's N(0, 0.02): with 0.02 each layer scales activations by about
        # sqrt(width) * 0.02 (0.3 at width 256), so narrow decoders start with vanishing signals and sit at the
        # "mean shape" for hundreds of steps; Kaiming init fits the same shapes far sooner (docs/results.md).
        for layer in self.hidden:
            nn.init.kaiming_uniform_(layer.weight, a=0.02, nonlinearity="leaky_relu")
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.last.weight, 1e-5, 0.02)
        nn.init.zeros_(self.last.bias)

    def point_features(self, points: torch.Tensor) -> torch.Tensor:
        """(B, P, 3) -> (B, P, point_dim): the coordinates, then sin and cos of 2^k pi x for k < point_octaves.

        The finest octave has a period of 2^(1-K) of the cube (K = 4: 1/8, 8 cells of 64^3), so a leg a few cells
        wide is a few features away instead of a few hundred ReLU kinks. Computed in fp32 with the first layer: in
        bf16 a coordinate is off by up to 2^-10, 1/256 of the finest period at K = 4 and 1/16 at K = 8."""
        if not self.point_octaves:
            return points
        scales = torch.pi * 2.0 ** torch.arange(self.point_octaves, device=points.device, dtype=points.dtype)
        phase = (points[..., None] * scales).flatten(-2)  # (B, P, 3K): x at each octave, then y, then z
        return torch.cat([points, torch.sin(phase), torch.cos(phase)], dim=-1)

    def forward(self, points: torch.Tensor, z: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        """points (B, P, 3) in [-0.5, 0.5], z (B, Z) -> occupancy (B, P, 1) in [0, 1] (leaky_clip: about).

        With `shape` (P,) indices into z's rows, points is (1, P, 3) and each point is decoded with its own row's
        code (the points of many shapes in one call, as batched extraction sends them)."""
        rows = 1 if shape is not None else z.shape[0]
        if points.ndim != 3 or points.shape[-1] != 3 or z.ndim != 2 or rows != points.shape[0] \
                or z.shape[1] != self.latent_dim or (shape is not None and shape.shape != points.shape[1:2]):
            raise ValueError(f"expected points (B, P, 3) and z (B, {self.latent_dim}) (or points (1, P, 3), z "
                             f"(S, {self.latent_dim}) and shape (P,)), got {tuple(points.shape)} and "
                             f"{tuple(z.shape)}")
        # The first layer on [point, z] split in two: W [p; z] + b = W_p p + (W_z z + b). The z part is computed once
        # per shape instead of once per point (the same function and weights, without a (B, P, 3 + Z) concatenation).
        # Under bf16 (autocast or bf16 weights) the first and last layers still run in fp32: in bf16 a coordinate
        # in [-0.5, 0.5] keeps 8 bits (steps of 1/512, half a cell of a 256^3 grid) and the output +-0.03 near the
        # 0.5 threshold; both layers are about 0.1 % of the FLOPs.
        first, kind = self.hidden[0], points.device.type
        with torch.autocast(kind, enabled=False):
            weight = first.weight.float()
            d = self.point_dim
            per_shape = torch.addmm(first.bias.float(), z.float(), weight[:, d:].t())  # (B, H)
            # (B, 1, H), or (1, P, H) with each point's own code's part
            per_shape = per_shape[:, None, :] if shape is None else per_shape[shape][None]
            x = torch.baddbmm(per_shape, self.point_features(points.float()),
                              weight[:, :d].t().expand(points.shape[0], -1, -1))
        x = x.to(torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else first.weight.dtype)
        rows = x.shape[:2]
        # The hidden layers on (B P, H) rows: on a 3D input nn.Linear's output is a view, and an in-place activation
        # of a view costs a clone and a copy of the whole activation in the backward pass (autograd's CopySlices:
        # about 20 device copies a step in issue 39's profile); a 2D output is its own tensor.
        x = nn.functional.leaky_relu_(x, 0.02).reshape(-1, x.shape[-1])
        for layer in self.hidden[1:]:
            x = nn.functional.leaky_relu_(layer(x), 0.02)
        with torch.autocast(kind, enabled=False):
            x = nn.functional.linear(x.float(), self.last.weight.float(), self.last.bias.float()).reshape(*rows, 1)
        if self.output == "sigmoid":
            return torch.sigmoid(x)
        return leaky_clip(x)


class Autoencoder(nn.Module):
    """Encoder + decoder, so that one module holds both (checkpoints, export, extraction)."""

    def __init__(self, *, latent_dim: int = 256, encoder_channels: int = 32, resolution: int = 64,
                 decoder_widths: Sequence[int] = (1024, 1024, 1024, 512, 256, 128),
                 decoder_output: str = "leaky_clip", point_octaves: int = 0) -> None:
        super().__init__()
        self.encoder = VoxelEncoder(latent_dim=latent_dim, encoder_channels=encoder_channels, resolution=resolution)
        self.decoder = ImplicitDecoder(latent_dim=latent_dim, decoder_widths=decoder_widths,
                                       decoder_output=decoder_output, point_octaves=point_octaves)

    def forward(self, voxels: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.decoder(points, self.encoder(voxels))
