import pytest
import torch
from torch.nn import functional as F


def test_soft_iou_loss_is_one_minus_the_iou_of_confident_volumes():
    from recon3d.tasks.vrn import soft_iou_loss

    truth = torch.zeros(2, 4, 8, 8)
    truth[:, 1:3, 2:6, 2:6] = 1  # 32 voxels
    guess = torch.zeros_like(truth)
    guess[:, 1:3, 2:6, 2:4] = 1  # 16 of them, nothing else
    logits = (guess * 2 - 1) * 30  # sigmoid 0 or 1
    assert soft_iou_loss(truth * 60 - 30, truth).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_iou_loss(logits, truth).item() == pytest.approx(1 - 17 / 33, abs=1e-5)  # (16 + 1) / (32 + 1)
    assert soft_iou_loss(torch.full_like(truth, -30.0), truth).item() == pytest.approx(1 - 1 / 33, abs=1e-5)


def test_soft_iou_loss_lowers_the_logits_of_extra_voxels_and_raises_the_missed_ones():
    from recon3d.tasks.vrn import soft_iou_loss

    truth = (torch.rand(1, 8, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    logits = torch.zeros_like(truth, requires_grad=True)  # every voxel at probability 0.5
    soft_iou_loss(logits, truth).backward()
    assert (logits.grad[truth > 0] < 0).all() and (logits.grad[truth == 0] > 0).all()


def test_the_vrn_loss_adds_the_soft_iou_term_of_every_stack():
    from recon3d.tasks.vrn import VRNTask, soft_iou_loss

    gen = torch.Generator().manual_seed(1)
    volume = (torch.rand(2, 8, 12, 12, generator=gen) < 0.2).float()
    outputs = [torch.randn(2, 8, 12, 12, generator=gen) for _ in range(2)]
    plain = VRNTask(depth=8, stacks=2, width=8, hourglass_levels=1, positive_weight=2.0)
    with_term = VRNTask(depth=8, stacks=2, width=8, hourglass_levels=1, positive_weight=2.0, soft_iou_weight=0.5)
    weight = torch.tensor(2.0)
    cross_entropy = sum(F.binary_cross_entropy_with_logits(o, volume, pos_weight=weight) for o in outputs)
    assert plain.loss(outputs, volume).item() == pytest.approx(cross_entropy.item(), rel=1e-6)
    term = sum(soft_iou_loss(o, volume) for o in outputs)
    assert with_term.loss(outputs, volume).item() == pytest.approx((cross_entropy + 0.5 * term).item(), rel=1e-6)
