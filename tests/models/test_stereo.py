import pytest
import torch

from recon3d.models.hourglass import HourglassVolumeRegressor
from recon3d.models.stereo import StereoViewSynthesizer, select_disparity


def naive_selection(image, probs, disparities):
    """The selection layer written out pixel by pixel: sum_d p_d(y, x) * image(y, x + d), linear interpolation,
    the border column repeated."""
    batch, channels, height, width = image.shape
    out = torch.zeros_like(image)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for d, disparity in enumerate(disparities.tolist()):
                    position = min(max(x + disparity, 0.0), width - 1.0)
                    low = int(position)
                    high = min(low + 1, width - 1)
                    frac = position - low
                    value = image[b, :, y, low] * (1 - frac) + image[b, :, y, high] * frac
                    out[b, :, y, x] += probs[b, d, y, x] * value
    return out


SELECTIONS = [torch.arange(5.0), torch.tensor([-2.0, -0.5, 0.0, 1.25, 3.0, 7.5]), torch.tensor([-11.5, 12.0, 9.25])]


@pytest.mark.parametrize("disparities", SELECTIONS)
def test_selection_layer_matches_a_naive_loop(disparities):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 4, 9, generator=generator)
    probs = torch.softmax(torch.randn(2, len(disparities), 4, 9, generator=generator), dim=1)
    assert torch.allclose(select_disparity(image, probs, disparities), naive_selection(image, probs, disparities),
                          atol=1e-6)


@pytest.mark.parametrize("disparities", SELECTIONS)
def test_selection_layer_gradients_match_the_naive_loop(disparities):
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 2, 3, 9, generator=generator)
    probs = torch.softmax(torch.randn(1, len(disparities), 3, 9, generator=generator), dim=1)
    weights = torch.randn(1, 2, 3, 9, generator=generator)
    grads = []
    for select in (select_disparity, naive_selection):
        leaves = image.clone().requires_grad_(), probs.clone().requires_grad_()
        (select(*leaves, disparities) * weights).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for ours, naive in zip(*grads):
        assert torch.allclose(ours, naive, atol=1e-5)


def test_one_hot_planes_shift_the_image():
    image = torch.arange(10.0).reshape(1, 1, 1, 10)
    probs = torch.zeros(1, 3, 1, 10)
    probs[:, 2] = 1.0  # the plane of disparity 2
    out = select_disparity(image, probs, torch.tensor([0.0, 1.0, 2.0]))
    assert out.flatten().tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 9, 9]


def test_selection_layer_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not agree"):
        select_disparity(torch.rand(1, 1, 4, 4), torch.rand(1, 3, 4, 4), torch.arange(2.0))


def test_stereo_model_outputs_and_gradients():
    model = StereoViewSynthesizer(image_channels=1, disparity_levels=9, disparity_max=8, widths=[4, 8])
    left = torch.rand(2, 1, 32, 40)
    out = model(left)
    assert out["right"].shape == left.shape and out["probs"].shape == (2, 9, 32, 40)
    assert torch.allclose(out["probs"].sum(1), torch.ones(2, 32, 40), atol=1e-5)
    assert out["disparity"].shape == (2, 32, 40) and 0 <= out["disparity"].min() <= out["disparity"].max() <= 8
    out["right"].mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_hourglass_gives_a_supervised_volume_per_stack():
    model = HourglassVolumeRegressor(image_channels=1, depth=8, stacks=3, width=8, hourglass_levels=2)
    outputs = model(torch.rand(2, 1, 48, 48))
    assert len(outputs) == 3 and all(o.shape == (2, 8, 12, 12) for o in outputs)
    sum(o.mean() for o in outputs).backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="image must be"):
        model(torch.rand(2, 3, 48, 48))


def test_stereo_planes_see_the_whole_image():
    """The whole-image branch: a change in one corner moves the planes' logits in the far corner, beyond any of the
    convolutions' windows (the scene's disparity, as Deep3D's fully connected layers give it)."""
    torch.manual_seed(0)
    model = StereoViewSynthesizer(image_channels=1, disparity_levels=9, disparity_max=8, widths=[4, 8]).eval()
    left = torch.rand(1, 1, 64, 64)
    changed = left.clone()
    changed[..., :8, :8] = 1 - changed[..., :8, :8]
    with torch.no_grad():
        far = model.plane_logits(left)[..., -8:, -8:], model.plane_logits(changed)[..., -8:, -8:]
        assert not torch.allclose(*far)
        model.scene.weight.zero_()
        far = model.plane_logits(left)[..., -8:, -8:], model.plane_logits(changed)[..., -8:, -8:]
        assert torch.allclose(*far)
