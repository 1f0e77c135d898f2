import pytest
import torch

from recon3d.models.voxel_encoder import VoxelEncoder, blocked_conv


@pytest.mark.parametrize("channels", [1, 3])
def test_the_blocked_convolution_is_the_strided_one(channels):
    """What the encoder's first convolution runs on CUDA: the same outputs and weight gradients as conv3d(stride=2,
    padding=1) of the 4^3 kernel."""
    torch.manual_seed(0)
    x = (torch.rand(2, channels, 16, 16, 16) > 0.6).float()
    weight = torch.randn(5, channels, 4, 4, 4, requires_grad=True)
    direct = torch.nn.functional.conv3d(x, weight, stride=2, padding=1)
    blocked = blocked_conv(x, weight)
    assert blocked.shape == direct.shape == (2, 5, 8, 8, 8)
    assert torch.allclose(blocked, direct, atol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), weight)[0] for out in (direct, blocked)]
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-4 * grads[0].abs().max().item())


def test_the_encoder_with_its_first_convolution_blocked_gives_the_same_code():
    torch.manual_seed(0)
    encoder = VoxelEncoder(latent_dim=8, encoder_channels=4, resolution=16).eval()
    voxels = (torch.rand(3, 1, 16, 16, 16) > 0.5).float()
    blocked = encoder.net[1:](blocked_conv(voxels, encoder.net[0].weight)).flatten(1)
    assert torch.allclose(blocked, encoder(voxels), atol=1e-6)
