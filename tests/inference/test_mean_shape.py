"""The training set's mean shape: the baseline that evaluations put beside every IoU."""

import json

import numpy as np
import pytest
import torch

from recon3d.cli.main import main
from recon3d.data.loading.datamodule import iter_split
from recon3d.geometry.metrics import batch_iou
from recon3d.inference.mean_shape import fitted_mean, mean_shape_iou, mean_voxels, pooled_voxels


def _boxes() -> torch.Tensor:
    """Four 8^3 shapes: a box that every one shares, grown in a different direction by each."""
    shapes = torch.zeros(4, 8, 8, 8, dtype=torch.bool)
    shapes[:, 2:6, 2:6, 2:6] = True
    shapes[0, 6:, 2:6, 2:6] = shapes[1, :2, 2:6, 2:6] = shapes[2, 2:6, 6:, 2:6] = shapes[3, 2:6, 2:6, 6:] = True
    return shapes


def test_the_fitted_threshold_scores_at_least_every_other_on_the_training_shapes():
    shapes = _boxes()
    mean = fitted_mean(lambda: iter([shapes[:3], shapes[3:]]))
    assert mean[2:6, 2:6, 2:6].all() and mean.sum() == 64  # the shared box: each growth is in 1 of 4 shapes
    best = batch_iou(mean[None].expand_as(shapes), shapes).mean()
    average = shapes.float().mean(0)
    for threshold in np.linspace(0.05, 0.95, 19):
        other = (average > threshold)[None].expand_as(shapes)
        assert best >= batch_iou(other, shapes).mean() - 1e-6
    assert torch.allclose(mean_shape_iou(mean, shapes), torch.full((4,), 64 / 96))
    with pytest.raises(ValueError, match="no training shapes"):
        fitted_mean(lambda: iter([]))


def test_mean_voxels_average_the_training_split(tiny_shards):
    mean = mean_voxels(tiny_shards, 8)
    train = torch.cat([pooled_voxels(b["voxels"], 8) for b in iter_split(tiny_shards, "train", 16)])
    assert mean.shape == (8, 8, 8) and mean.any()
    assert mean_shape_iou(mean, train).mean() > 0.2  # the shapes overlap: an average shape is not nothing


def test_eval_tables_carry_the_mean_shape_beside_the_iou(trained_autoencoder, tiny_shards, tmp_path, capsys):
    assert main(["eval", "--ckpt", str(trained_autoencoder), "--shards", str(tiny_shards), "--split", "test",
                 "--resolution", "16", "--iou-resolution", "8", "-o", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "eval_autoencoder_test.json").read_text())
    mean = mean_voxels(tiny_shards, 8)
    test = [(b["key"], pooled_voxels(b["voxels"], 8)) for b in iter_split(tiny_shards, "test", 16)]
    expected = torch.cat([mean_shape_iou(mean, voxels) for _, voxels in test]).mean()
    assert summary["mean over shapes"]["iou_mean_shape"] == pytest.approx(float(expected), abs=1e-6)
    assert all("iou_mean_shape" in values for values in summary.values())
    assert "iou_mean_shape" in capsys.readouterr().out
