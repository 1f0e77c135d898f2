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
