import numpy as np
import pytest

from recon3d.geometry.metrics import sample_surface, surface_metrics, voxel_metrics


def _naive(pred, target, pn, tn, t):
    d = np.linalg.norm(pred[:, None] - target[None], axis=-1)
    a, b = d.min(1), d.min(0)
    ia, ib = d.argmin(1), d.argmin(0)
    p, r = np.mean(a < t), np.mean(b < t)
    return {"chamfer_l2": 0.5 * (np.mean(a**2) + np.mean(b**2)), "chamfer_l1": 0.5 * (a.mean() + b.mean()),
            "normal_consistency": 0.5 * (np.abs((pn * tn[ia]).sum(1)).mean() + np.abs((tn * pn[ib]).sum(1)).mean()),
            "f": 2 * p * r / (p + r) if p + r else 0.0}


def test_surface_metrics_against_a_naive_reference():
    rng = np.random.default_rng(0)
    pred, target = rng.random((300, 3)) - 0.5, rng.random((200, 3)) - 0.5
    pn = rng.normal(size=(300, 3))
    tn = rng.normal(size=(200, 3))
    pn /= np.linalg.norm(pn, axis=1, keepdims=True)
    tn /= np.linalg.norm(tn, axis=1, keepdims=True)
    ours = surface_metrics(pred, target, pn, tn, thresholds=(0.05,))
    ref = _naive(pred, target, pn, tn, 0.05)
    for key in ("chamfer_l2", "chamfer_l1", "normal_consistency"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-9)
    assert ours["fscore@5%"] == pytest.approx(ref["f"])


def test_hand_computed_chamfer():
    pred = np.array([[0.0, 0, 0]])
    target = np.array([[0.1, 0, 0], [0.0, 0.2, 0]])
    m = surface_metrics(pred, target, thresholds=(0.15,))
    assert m["chamfer_l2"] == pytest.approx(0.5 * (0.01 + (0.01 + 0.04) / 2))
    assert m["chamfer_l1"] == pytest.approx(0.5 * (0.1 + 0.15))
    assert m["fscore@15%"] == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_identical_sets_are_perfect():
    pts = np.random.default_rng(1).random((50, 3))
    m = surface_metrics(pts, pts, np.tile([0, 0, 1.0], (50, 1)), np.tile([0, 0, -1.0], (50, 1)))
    assert m["chamfer_l2"] == 0 and m["chamfer_l1"] == 0 and m["normal_consistency"] == 1
    assert all(v == 1 for k, v in m.items() if k.startswith("fscore"))


def test_voxel_metrics_hand_computed():
    target = np.array([1, 1, 0, 0, 1], float)
    pred = np.array([0.9, 0.2, 0.7, 0.1, 0.6])
    m = voxel_metrics(pred, target)
    assert m["iou"] == pytest.approx(2 / 4) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["mse"] == pytest.approx(np.mean((pred - target) ** 2))
    with pytest.raises(ValueError, match="differ in shape"):
        voxel_metrics(pred, target[:3])


def test_sample_surface_is_on_the_mesh_and_area_weighted():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 3, 1.0]])
    faces = np.array([[0, 1, 2], [3, 4, 5]])  # second triangle has 9x the area
    pts, normals = sample_surface(verts, faces, 10000, np.random.default_rng(0))
    upper = pts[:, 2] > 0.5
    assert upper.mean() == pytest.approx(0.9, abs=0.02)
    assert np.allclose(np.abs(normals[:, 2]), 1)
