import random

import numpy as np
import pytest
import torch

from recon3d.data import schema
from recon3d.data.loading.datamodule import ShardDataModule
from recon3d.data.loading.pipelines import decode_stereo, decode_volume
from recon3d.data.loading.streams import SkipCounter, iter_raw
from recon3d.data.tools.verify import verify_shards
from recon3d.tasks.stereo import pair_errors


def raw_samples(shards):
    return list(iter_raw(sorted(str(p) for p in shards.glob("*.tar")), SkipCounter()))


def test_stereo_shards_hold_right_views_and_verify(stereo_shards):
    assert verify_shards(stereo_shards).ok
    raw = raw_samples(stereo_shards)[0]
    meta = schema.decode_meta(raw)
    assert meta["stereo_baseline"] == 0.1
    for view in range(meta["views"]):
        left, right = schema.view_image(raw, view), schema.view_image(raw, view, right=True)
        assert left.shape == right.shape and not np.array_equal(left, right)
    assert schema.load_npy(raw[schema.CAMERA_RT_RIGHT]).shape == (meta["views"], 3, 4)


def test_missing_or_short_right_views_are_reported(stereo_shards):
    from recon3d.data.tools.verify import _check_sample

    raw = raw_samples(stereo_shards)[0]
    members = {k: v for k, v in raw.items() if not k.startswith("__") and k != schema.RIGHT_VIEWS}
    problems = _check_sample(raw["__key__"], members, {"required": [schema.META]})
    assert len(problems) == 1 and "0 right views" in problems[0]
    views = schema.view_count(raw, right=True)
    members[schema.RIGHT_VIEWS] = schema.pack_views([schema.view_image(raw, i, right=True) for i in range(views - 1)])
    problems = _check_sample(raw["__key__"], members, {"required": [schema.META]})
    assert len(problems) == 1 and f"{views - 1} right views" in problems[0]


def test_right_views_are_the_left_views_shifted_by_the_disparity(stereo_shards):
    """Shifting the left view by the object's disparity explains the right view better than copying it."""
    copy_errors, shift_errors = [], []
    for raw in raw_samples(stereo_shards):
        pair = decode_stereo(raw, 48, False, True, random.Random(0))
        assert pair["left"].shape == pair["right"].shape == (1, 48, 48)
        assert 4.0 < pair["mean_disparity"] < 6.3  # f b / z = 70 px x 0.1 / (1.14 to 1.66)
        assert pair["left"].dtype == np.uint8  # loaders carry uint8; expand_batch makes [0, 1] floats
        left, right = (torch.as_tensor(pair[k])[None].float() / 255 for k in ("left", "right"))
        errors = pair_errors(right, left, right, torch.as_tensor(pair["mean_disparity"])[None])
        assert errors["mae"].item() == 0.0
        copy_errors.append(errors["mae_copy"].item())
        shift_errors.append(errors["mae_shift"].item())
    assert np.mean(shift_errors) < 0.6 * np.mean(copy_errors)


def test_volume_stage_lines_up_with_the_cropped_and_flipped_view(stereo_shards):
    ious = []
    for raw in raw_samples(stereo_shards):
        for seed in range(4):  # random crops, half of them flipped
            sample = decode_volume(raw, 48, True, True, True, random.Random(seed), 0, 16)
            assert sample["volume"].shape == (16, 12, 12) and "voxel_bits" not in sample
            silhouette = sample["image"][0].reshape(12, 4, 12, 4).mean((1, 3)) < 0.9 * 255
            seen = sample["volume"].any(0).astype(bool)
            ious.append((seen & silhouette).sum() / max((seen | silhouette).sum(), 1))
    assert np.median(ious) > 0.8


def test_the_stereo_stage_needs_right_views(tiny_shards):
    module = ShardDataModule(shards=str(tiny_shards), stage="stereo")
    with pytest.raises(ValueError, match="stereo_baseline"):
        module.setup()


def test_stereo_and_volume_loaders_give_batches(stereo_shards):
    for stage, names in (("stereo", {"left", "right", "mean_disparity"}), ("volume", {"image", "volume"})):
        module = ShardDataModule(shards=str(stereo_shards), stage=stage, batch_size=2, num_workers=0,
                                 crop_size=48, volume_depth=8)
        module.setup()
        batch = next(iter(module.train_dataloader()))
        assert names <= set(batch) and len(batch["key"]) == 2
