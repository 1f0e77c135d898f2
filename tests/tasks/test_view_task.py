import math

import pytest
import torch

from recon3d.errors import ConfigError
from recon3d.training.run import run
from tests.conftest import STEREO_TINY, VRN_TINY, tiny_config


def _run(shards, run_dir, *settings):
    cfg = tiny_config(f"loader.shards={shards}", f"train.run_dir={run_dir}", *settings)
    return run(cfg, enable_wandb=False, enable_progress_bar=False)


def test_vrn_trains_and_measures_iou_in_the_camera_frame(stereo_shards, tmp_path):
    from recon3d.tasks.vrn import VRNTask

    result = _run(stereo_shards, tmp_path, *VRN_TINY, "vrn.epochs=2")
    assert result.global_step == 4
    assert {"train/loss", "val/loss", "val/iou"} <= set(result.metrics)
    assert {"val/iou/car", "val/iou/chair", "val/iou/table"} & set(result.metrics)
    assert 0.0 <= result.metrics["val/iou"] <= 1.0
    assert sorted((tmp_path / "volumes").glob("epoch_*.png"))
    task = VRNTask.load_from_checkpoint(result.last_checkpoint, map_location="cpu", weights_only=True).eval()
    assert task.model(torch.rand(1, 1, 48, 48))[-1].shape == (1, 8, 12, 12)


def test_stereo_trains_and_reports_the_baselines(stereo_shards, tmp_path):
    from recon3d.tasks.stereo import StereoTask

    result = _run(stereo_shards, tmp_path, *STEREO_TINY)
    assert {"train/loss", "val/mae", "val/mae_copy", "val/mae_shift"} <= set(result.metrics)
    assert result.metrics["val/mae_shift"] < result.metrics["val/mae_copy"]
    assert sorted((tmp_path / "stereo").glob("epoch_*.png"))
    task = StereoTask.load_from_checkpoint(result.last_checkpoint, map_location="cpu", weights_only=True).eval()
    out = task.model(torch.rand(1, 1, 48, 48))
    assert out["right"].shape == (1, 1, 48, 48) and out["disparity"].shape == (1, 48, 48)


def test_stage_and_loader_must_agree(stereo_shards, tmp_path):
    with pytest.raises(ConfigError, match="reads the volume pipeline of the loader, but loader.stage=image"):
        _run(stereo_shards, tmp_path, *VRN_TINY, "loader.stage=image")
    with pytest.raises(ConfigError, match="multiple of 4 x 2"):
        _run(stereo_shards, tmp_path, *VRN_TINY, "loader.crop_size=40")


def test_validation_sheet_takes_each_category_in_turn():
    """Validation batches read shard by shard run category by category; the sheet still shows every category."""
    from recon3d.tasks.stereo import StereoTask

    task = StereoTask(widths=[8, 8, 8, 8], disparity_levels=5, crop_size=16, images_to_log=4).eval()
    task.on_validation_epoch_start()
    for category in ("airplane", "car", "chair"):  # two batches of four views each, one category after another
        for batch_idx in range(2):
            keys = [f"{category}/s{batch_idx}{n}" for n in range(4)]
            batch = {"key": keys, "left": torch.rand(4, 1, 16, 16), "right": torch.rand(4, 1, 16, 16),
                     "mean_disparity": torch.full((4,), 2.0)}
            with torch.no_grad():
                task.validation_step(batch, batch_idx)
    assert len(task.pictures) == 12  # at most images_to_log per category are kept, not the first four views
    shown = [key for key, picture in task.pictures if any(picture is p for p in task.sheet_pictures())]
    assert shown == ["airplane/s00", "airplane/s01", "car/s00", "chair/s00"]
    assert task.picture_sheet(task.sheet_pictures()).shape == (4 * 16, 4 * 16, 3)


@pytest.mark.parametrize("stage", ["vrn", "stereo"])
def test_cosine_schedule_takes_the_lr_down_to_lr_final(stereo_shards, tmp_path, stage):
    settings = VRN_TINY if stage == "vrn" else STEREO_TINY
    _run(stereo_shards, tmp_path, *settings, f"{stage}.epochs=3", f"{stage}.lr=0.002", f"{stage}.lr_schedule=cosine",
         f"{stage}.lr_final=0.1", "train.log_every_steps=1")
    rows = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("lr-Adam")
    lrs = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert len(lrs) == 6 and lrs[0] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # 0.002 x (0.1 + 0.45 (1 + cos(pi s / 6))) at step s
    assert lrs[-1] == pytest.approx(0.002 * (0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 6))))


def test_unknown_view_lr_schedule_is_refused():
    with pytest.raises(ConfigError, match="stereo.lr_schedule"):
        tiny_config("stereo.lr_schedule=step")
