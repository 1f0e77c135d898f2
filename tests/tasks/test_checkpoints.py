"""Checkpoints say their stage; one loader returns the right task; checkpoints from before the stage key load;
`recon3d eval` takes any of them."""

import pytest
import torch

from recon3d.stages import STAGES
from recon3d.tasks.checkpoints import STAGE_KEY, load_checkpoint, read_checkpoint, stage_of


@pytest.fixture(scope="module")
def checkpoints(trained_autoencoder, trained_svr, trained_gan, trained_vrn, trained_stereo):
    return {"autoencoder": trained_autoencoder, "svr": trained_svr, "gan": trained_gan, "vrn": trained_vrn,
            "stereo": trained_stereo}


def test_every_checkpoint_names_its_stage_and_loads_as_its_task(checkpoints):
    for stage, path in checkpoints.items():
        assert read_checkpoint(path)[STAGE_KEY] == stage
        task = load_checkpoint(path)
        assert isinstance(task, STAGES[stage].task_class()) and not task.training


def test_checkpoints_without_the_stage_key_still_load(checkpoints, tmp_path):
    """A checkpoint as recon3d 0.1.0 wrote it: today's file with the stage key removed."""
    for stage, path in checkpoints.items():
        old = read_checkpoint(path)
        del old[STAGE_KEY]
        torch.save(old, tmp_path / f"{stage}.ckpt")
        assert stage_of(read_checkpoint(tmp_path / f"{stage}.ckpt")).name == stage
        assert isinstance(load_checkpoint(tmp_path / f"{stage}.ckpt"), STAGES[stage].task_class())


def test_a_foreign_or_broken_file_is_named(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="foreign.ckpt: not a recon3d checkpoint"):
        load_checkpoint(tmp_path / "foreign.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="cut.ckpt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_eval_takes_any_checkpoint_and_gives_that_stages_table(checkpoints, tiny_shards, stereo_shards, tmp_path,
                                                               capsys):
    from recon3d.cli.main import main

    expected = {"autoencoder": "chamfer_l2_x1000", "svr": "latent_mse", "gan": "mmd", "vrn": "iou",
                "stereo": "mae_shift"}
    own = {"autoencoder": ["--resolution", "16"], "svr": ["--resolution", "16"], "gan": ["--draws", "1"]}
    for stage, path in checkpoints.items():
        shards = stereo_shards if stage in ("vrn", "stereo") else tiny_shards
        out = tmp_path / stage
        assert main(["eval", "--ckpt", str(path), "--shards", str(shards), "--split", "val", "-o", str(out),
                     "--device", "cpu", *own.get(stage, [])]) == 0, stage
        printed = capsys.readouterr().out
        assert expected[stage] in printed and "mean over categories" in printed, (stage, printed)
        assert (out / f"eval_{stage}_val.json").is_file(), stage


def test_eval_refuses_an_option_the_stage_does_not_take(checkpoints, tiny_shards, tmp_path, capsys):
    """Each stage's evaluate names its own options; one it does not name is an error, not silently dropped."""
    from recon3d.cli.main import main

    assert main(["eval", "--ckpt", str(checkpoints["autoencoder"]), "--shards", str(tiny_shards), "--draws", "3",
                 "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--draws: not an option of an autoencoder checkpoint's evaluate" in err
    assert "--resolution, --iou-resolution" in err  # the options it does take
    assert main(["eval", "--ckpt", str(checkpoints["gan"]), "--shards", str(tiny_shards), "--resolution", "16",
                 "-o", str(tmp_path)]) == 2
    assert "--resolution: not an option of a gan checkpoint's evaluate" in capsys.readouterr().err
    assert not list(tmp_path.glob("eval_*")), "refused before any work"


def test_eval_alias_refuses_another_stage(checkpoints, tiny_shards, capsys):
    from recon3d.cli.main import main

    assert main(["eval-vrn", "--ckpt", str(checkpoints["svr"]), "--shards", str(tiny_shards)]) == 2
    assert "is a svr checkpoint; eval-vrn needs a vrn checkpoint" in capsys.readouterr().err
