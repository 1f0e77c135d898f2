"""VRN at use time: its per-category table, and a mesh from a photo in the camera's frame."""

import json

import numpy as np
import pytest
from PIL import Image

from recon3d.cli.main import main


def test_eval_vrn_writes_a_per_category_table(trained_vrn, stereo_shards, tmp_path, capsys):
    assert main(["eval-vrn", "--ckpt", str(trained_vrn), "--shards", str(stereo_shards), "--split", "train",
                 "-o", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "eval_vrn_train.json").read_text())
    assert {"mean over categories", "mean over shapes"} <= set(summary)
    manifest = json.loads((stereo_shards / "manifest.json").read_text())
    assert summary["mean over shapes"]["shapes"] == manifest["splits"]["train"]["samples"]
    assert sum(v["shapes"] for k, v in summary.items() if not k.startswith("mean")) == \
        manifest["splits"]["train"]["samples"]
    assert "mean over shapes" in capsys.readouterr().out
    assert all(0 <= values["iou_mean_shape"] <= 1 for values in summary.values())  # the mean volume's score


def test_reconstruct_with_vrn_gives_a_mesh_in_the_camera_frame(trained_vrn, stereo_shards, tmp_path):
    from recon3d.inference.vrn import volume_mesh

    image = np.full((64, 64, 3), 255, np.uint8)
    image[16:48, 20:44] = 90
    Image.fromarray(image).save(tmp_path / "box.png")
    assert main(["reconstruct", str(tmp_path / "box.png"), "--model", "vrn", "--ckpt", str(trained_vrn),
                 "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "box.input.png").is_file() and (tmp_path / "out" / "box.obj").is_file()
    # the placement itself, on a known volume: a centred block comes out centred and upright
    volume = np.zeros((8, 12, 12), np.float32)
    volume[3:5, 2:6, 5:7] = 1.0  # upper half of the image (rows 2-5), middle columns
    verts, faces = volume_mesh(volume, focal=150.0, distance=1.4, crop=48)
    assert len(faces) and abs(verts[:, 0].mean()) < 0.02 and verts[:, 1].mean() > 0.05


def test_a_checkpoint_of_another_stage_is_refused(trained_stereo):
    from recon3d.tasks.checkpoints import load_checkpoint

    with pytest.raises(ValueError, match="a stereo checkpoint, but this needs a vrn checkpoint"):
        load_checkpoint(trained_stereo, expect="vrn")
