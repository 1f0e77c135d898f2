"""A run folder names the checkpoint it hands on: its best by the stage's metric, else its last (the GAN: its last)."""

import json
import shutil

import pytest


def test_a_run_folder_hands_on_its_best_checkpoint_else_its_last(tmp_path):
    from recon3d.runs import run_checkpoint, run_name

    folder = tmp_path / "ae" / "checkpoints"
    folder.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="a run folder without a checkpoint"):
        run_checkpoint(tmp_path / "ae")
    (folder / "last.ckpt").write_bytes(b"x")
    assert run_checkpoint(tmp_path / "ae") == folder / "last.ckpt"
    (folder / "best-003-40.ckpt").write_bytes(b"x")
    (folder / "best-003-40.fp32.ckpt").write_bytes(b"x")
    assert run_checkpoint(tmp_path / "ae") == folder / "best-003-40.ckpt"
    assert run_name(tmp_path / "ae") == "ae" == run_name(folder / "last.ckpt")
    # a GAN run hands on its last checkpoint though it keeps a best one (the stage table's hands_on)
    (tmp_path / "ae" / "config.json").write_text(json.dumps({"train": {"stage": "autoencoder"}}))
    assert run_checkpoint(tmp_path / "ae") == folder / "best-003-40.ckpt"
    gan = tmp_path / "gan"
    shutil.copytree(tmp_path / "ae", gan)
    (gan / "config.json").write_text(json.dumps({"train": {"stage": "gan"}}))
    assert run_checkpoint(gan) == gan / "checkpoints" / "last.ckpt"
    (gan / "checkpoints" / "last.ckpt").unlink()
    assert run_checkpoint(gan) == gan / "checkpoints" / "best-003-40.ckpt"
