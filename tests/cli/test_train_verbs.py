"""`recon3d train` end to end, and a rerun with a longer schedule continuing from last.ckpt."""

from recon3d.cli.main import main
from tests.conftest import TINY


def test_train_command_end_to_end_then_resume(tiny_shards, tmp_path, capsys):
    args = ["train", "-c", str(TINY), "--shards", str(tiny_shards), "--run-dir", str(tmp_path),
            "loader.train_samples_per_epoch=4", "train.accelerator=cpu", "train.phase_epochs=[1,1]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stopped at epoch 2, step 4" in out and "last.ckpt" in out and "val/iou" in out
    assert main(args[:-1] + ["train.phase_epochs=[1,2]"]) == 0  # a longer schedule continues from last.ckpt
    assert "stopped at epoch 3, step 6" in capsys.readouterr().out
