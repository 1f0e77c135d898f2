import pytest
import torch

from recon3d.models.image_encoder import ImageEncoder


@pytest.mark.parametrize("architecture, blocks", [("resnet18", 8), ("resnet34", 16)])
def test_resnet_depth_shapes_and_range(architecture, blocks):
    enc = ImageEncoder(latent_dim=10, image_channels=3, architecture=architecture, base_width=8)
    assert len(enc.stages) == blocks
    z = enc(torch.rand(2, 3, 128, 128))
    assert z.shape == (2, 10) and (z > 0).all() and (z < 1).all()


def test_resnet18_parameter_count_matches_the_paper_architecture():
    """With base width 64 and 1000 outputs on RGB, ResNet-18 has 11,689,512 parameters (He et al.)."""
    enc = ImageEncoder(latent_dim=1000, image_channels=3, architecture="resnet18", base_width=64)
    assert sum(p.numel() for p in enc.parameters()) == 11_689_512


def test_gradients_reach_the_stem():
    enc = ImageEncoder(latent_dim=4, image_channels=1, base_width=4)
    enc(torch.rand(2, 1, 64, 64)).sum().backward()
    assert enc.stem[0].weight.grad.abs().sum() > 0


def test_wrong_channels_are_refused():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        ImageEncoder(latent_dim=4, image_channels=1, base_width=4)(torch.rand(1, 3, 32, 32))
