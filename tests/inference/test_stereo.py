"""Deep3D at use time: its table beside the baselines, the stereo command on images, frames and video, and the real
rectified pair."""

import json

import numpy as np
import pytest
from PIL import Image

from recon3d.cli.main import main


def test_eval_stereo_reports_the_model_beside_the_baselines(trained_stereo, stereo_shards, tmp_path):
    assert main(["eval-stereo", "--ckpt", str(trained_stereo), "--shards", str(stereo_shards), "--split", "val",
                 "-o", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "eval_stereo_val.json").read_text())
    means = summary["mean over shapes"]
    assert means["mae_shift"] < means["mae_copy"] and means["mae"] > 0


def test_stereo_command_on_an_image_a_folder_and_a_video(trained_stereo, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(frames / f"f{i}.png")
    assert main(["stereo", str(frames / "f0.png"), "--ckpt", str(trained_stereo), "-o", str(tmp_path / "one")]) == 0
    sbs = np.asarray(Image.open(tmp_path / "one" / "f0.sbs.png"))
    anaglyph = np.asarray(Image.open(tmp_path / "one" / "f0.anaglyph.png"))
    left = np.asarray(Image.open(frames / "f0.png"))
    assert sbs.shape == (40, 112, 3) and np.array_equal(sbs[:, :56], left)
    assert np.array_equal(anaglyph[..., 0], left[..., 0]) and np.array_equal(anaglyph[..., 1:], sbs[:, 56:, 1:])
    assert main(["stereo", str(frames), "--ckpt", str(trained_stereo), "-o", str(tmp_path / "many")]) == 0
    assert len(list((tmp_path / "many").glob("*.png"))) == 6

    import imageio_ffmpeg

    video = tmp_path / "clip.mp4"
    writer = imageio_ffmpeg.write_frames(str(video), (56, 40), fps=5, macro_block_size=1)
    writer.send(None)
    for i in range(3):
        writer.send(np.ascontiguousarray(np.asarray(Image.open(frames / f"f{i}.png"))))
    writer.close()
    assert main(["stereo", str(video), "--ckpt", str(trained_stereo), "-o", str(tmp_path / "video")]) == 0
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "video" / "clip.sbs.mp4"))
    info = next(reader)
    assert tuple(info["size"]) == (112, 40) and len(list(reader)) == 3


def test_real_pair_check_reports_mae_beside_baselines(trained_stereo, tmp_path):
    from recon3d.inference.stereo import real_pair_check

    result = real_pair_check(trained_stereo, tmp_path, scale=8)
    assert result["mae_shift"] < result["mae_copy"]  # the real pair's right view is a shifted left view
    assert 0 < result["mean_true_disparity_px"] < 8 and result["disparity_mae_px"] >= 0
    for name in ("disparity_mae_px", "disparity_bad1", "disparity_bad2"):
        assert name in result and f"{name}_constant" in result
    assert 0 <= result["disparity_bad2"] <= result["disparity_bad1"] <= 1
    assert (tmp_path / "real_pair.png").is_file()


def test_disparity_errors_are_end_point_error_and_bad_pixel_shares():
    from recon3d.inference.stereo import disparity_errors

    truth = np.array([[1.0, 2.0, 3.0, 9.0]])
    known = np.array([[True, True, True, False]])  # the last pixel has no truth: not counted
    errors = disparity_errors(np.array([[1.5, 4.0, 0.0, 0.0]]), truth, known, "_x")
    assert errors == {"disparity_mae_px_x": pytest.approx(5.5 / 3), "disparity_bad1_x": pytest.approx(2 / 3),
                      "disparity_bad2_x": pytest.approx(1 / 3)}
