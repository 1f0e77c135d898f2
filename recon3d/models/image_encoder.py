"""ResNet image encoders written in plain torch (no torchvision CPU build here): an image -> a latent code z."""

from __future__ import annotations

import torch
from torch import nn

_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ImageEncoder(nn.Module):
    """ResNet-18 (or -34) on a (B, C, H, W) image, global average pooling, a linear layer and a sigmoid -> (B, Z).

    Args:
        latent_dim: Z, matching the autoencoder's code.
        image_channels: 1 (grayscale, as IM-NET) or 3.
        architecture: "resnet18" or "resnet34".
        base_width: channels of the first stage (64 in the papers; smaller for CPU runs).
    """

    def __init__(self, *, latent_dim: int = 256, image_channels: int = 1, architecture: str = "resnet18",
                 base_width: int = 64) -> None:
        super().__init__()
        if architecture not in _BLOCKS:
            raise ValueError(f"architecture must be one of {sorted(_BLOCKS)}, got {architecture!r}")
        self.image_channels = image_channels
        self.stem = nn.Sequential(nn.Conv2d(image_channels, base_width, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(base_width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, channels = [], base_width
        for index, blocks in enumerate(_BLOCKS[architecture]):
            out = base_width * 2**index
            for b in range(blocks):
                stages.append(BasicBlock(channels, out, 2 if b == 0 and index > 0 else 1))
                channels = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, latent_dim)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.stages:  # zero-init the last BN of each block: every block starts as an identity
            nn.init.zeros_(block.bn2.weight)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, C, H, W) in [0, 1] -> z (B, Z) in (0, 1)."""
        if image.ndim != 4 or image.shape[1] != self.image_channels:
            raise ValueError(f"expected images (B, {self.image_channels}, H, W), got {tuple(image.shape)}")
        features = self.stages(self.stem(image)).mean(dim=(2, 3))
        return torch.sigmoid(self.head(features))
