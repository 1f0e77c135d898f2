"""The latent GAN of IM-NET: an MLP generator noise -> z and an MLP critic z -> score (WGAN-GP, no batch norm)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(0.02)]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


class LatentGenerator(nn.Module):
    """noise (B, noise_dim) -> z (B, latent_dim) in [0, 1], the range of the voxel encoder's sigmoid codes."""

    def __init__(self, *, noise_dim: int = 128, latent_dim: int = 256, widths: Sequence[int] = (2048, 2048)) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.net = _mlp([noise_dim, *widths, latent_dim])

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(noise))

    @torch.no_grad()
    def codes_for_seeds(self, seeds: Sequence[int]) -> torch.Tensor:
        """One code (len(seeds), Z) per noise seed: the same seed gives the same shape, on any device (the noise is
        drawn on the CPU)."""
        noise = [torch.randn(self.noise_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return self(torch.stack(noise).to(next(self.parameters()).device))

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`count` codes from standard normal noise (on this module's device)."""
        device = next(self.parameters()).device
        noise = torch.randn(count, self.noise_dim, generator=generator, device="cpu").to(device)
        return self(noise)


class LatentCritic(nn.Module):
    """z (B, latent_dim) -> an unbounded score (B,); no normalisation layers, as the gradient penalty requires."""

    def __init__(self, *, latent_dim: int = 256, widths: Sequence[int] = (2048, 2048)) -> None:
        super().__init__()
        self.net = _mlp([latent_dim, *widths, 1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)[:, 0]


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's penalty E[(||grad critic(x_hat)||_2 - 1)^2] on random interpolates x_hat of real and fake."""
    alpha = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()
