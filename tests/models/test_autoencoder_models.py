import pytest
import torch

from recon3d.models.implicit_decoder import Autoencoder, ImplicitDecoder, leaky_clip
from recon3d.models.voxel_encoder import VoxelEncoder


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_encoder_shapes_and_range(resolution):
    enc = VoxelEncoder(latent_dim=12, encoder_channels=4, resolution=resolution)
    z = enc(torch.rand(2, 1, resolution, resolution, resolution))
    assert z.shape == (2, 12) and (z > 0).all() and (z < 1).all()


def test_encoder_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(B, 1, 16, 16, 16\)"):
        VoxelEncoder(latent_dim=4, encoder_channels=2, resolution=16)(torch.rand(2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="power of two"):
        VoxelEncoder(resolution=48)


@pytest.mark.parametrize("output", ["sigmoid", "leaky_clip"])
def test_decoder_shapes_and_gradients(output):
    dec = ImplicitDecoder(latent_dim=8, decoder_widths=[16, 8], decoder_output=output)
    points = torch.rand(3, 50, 3) - 0.5
    z = torch.rand(3, 8, requires_grad=True)
    out = dec(points, z)
    assert out.shape == (3, 50, 1)
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is not None for p in dec.parameters())


def test_leaky_clip_is_identity_inside_and_leaky_outside():
    assert torch.allclose(leaky_clip(torch.tensor([-1.0, 0.0, 0.3, 1.0, 2.0])),
                          torch.tensor([-0.01, 0.0, 0.3, 1.0, 1.01]))


def test_decoder_output_goes_through_the_chosen_function():
    dec = ImplicitDecoder(latent_dim=2, decoder_widths=[4], decoder_output="leaky_clip")
    torch.nn.init.constant_(dec.last.bias, 3.0)  # pre-activation ~3: clipped to ~1.02, not sigmoid's 0.95
    out = dec(torch.zeros(1, 5, 3), torch.zeros(1, 2))
    assert torch.allclose(out, torch.full_like(out, 1.02), atol=1e-3)


def test_decoder_rejects_mismatched_z():
    dec = ImplicitDecoder(latent_dim=8, decoder_widths=[4])
    with pytest.raises(ValueError, match=r"z \(B, 8\)"):
        dec(torch.rand(2, 5, 3), torch.rand(2, 7))


def test_autoencoder_end_to_end_gradients():
    model = Autoencoder(latent_dim=8, encoder_channels=2, resolution=16, decoder_widths=[16])
    out = model(torch.rand(2, 1, 16, 16, 16), torch.rand(2, 30, 3) - 0.5)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
