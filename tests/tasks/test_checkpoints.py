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


@pytest.fixture(scope="module")
def travelling_runs(tiny_shards, trained_autoencoder, tmp_path_factory):
    """An image encoder and a latent GAN trained against a copy of the autoencoder, their run folders then copied to
    another place and the autoencoder copy deleted: as a run folder arrives on another machine."""
    import shutil

    from recon3d.data.loading.latents import default_latents
    from recon3d.training.run import run
    from tests.conftest import GAN_TINY, tiny_config

    latents = default_latents(str(tiny_shards), str(trained_autoencoder))  # the copy's bytes: the same codes
    base = tmp_path_factory.mktemp("travel")
    ae = base / "ae" / "last.ckpt"
    ae.parent.mkdir()
    shutil.copy(trained_autoencoder, ae)
    common = (f"loader.shards={tiny_shards}", "loader.train_samples_per_epoch=4", "train.accelerator=cpu")
    run(tiny_config(*common, f"train.run_dir={base / 'svr'}", "train.stage=svr", f"svr.autoencoder_ckpt={ae}",
                    f"svr.latents={latents}",
                    "svr.base_width=4", "svr.epochs=1"), enable_wandb=False, enable_progress_bar=False)
    run(tiny_config(*common, f"train.run_dir={base / 'gan'}", "train.stage=gan", f"gan.autoencoder_ckpt={ae}",
                    f"gan.latents={latents}",
                    *GAN_TINY), enable_wandb=False, enable_progress_bar=False)
    moved = tmp_path_factory.mktemp("elsewhere")
    for name in ("svr", "gan"):
        shutil.copytree(base / name, moved / name)
        shutil.rmtree(base / name)
    ae.unlink()
    return moved, ae


def test_svr_and_gan_checkpoints_carry_their_autoencoder(travelling_runs, tiny_shards, tmp_path, monkeypatch, capsys):
    from recon3d.cli.main import main
    from tests.inference.test_reconstruct import _object_png

    moved, ae = travelling_runs
    monkeypatch.chdir(tmp_path)  # another working folder too
    assert main(["reconstruct", str(_object_png(tmp_path)), "--ckpt", str(moved / "svr"), "-o", "meshes",
                 "--resolution", "16"]) == 0
    assert (tmp_path / "meshes" / "obj.obj").is_file()
    assert main(["eval", "--ckpt", str(moved / "svr"), "--shards", str(tiny_shards), "--split", "test",
                 "--resolution", "8", "-o", "tables"]) == 0
    assert (tmp_path / "tables" / "eval_svr_test.json").is_file()
    assert main(["generate", "--ckpt", str(moved / "gan"), "-n", "2", "-o", "gan", "--resolution", "16"]) == 0
    assert len(list((tmp_path / "gan").glob("*.obj"))) == 2
    carried = read_checkpoint(moved / "svr" / "checkpoints" / "last.ckpt")["recon3d_autoencoder"]
    assert carried["read_from"] == str(ae) and len(carried["sha256"]) == 64


def test_an_older_checkpoint_whose_autoencoder_is_gone_is_one_line(travelling_runs, tmp_path, capsys):
    from recon3d.cli.main import main
    from tests.inference.test_reconstruct import _object_png

    moved, ae = travelling_runs
    old = read_checkpoint(moved / "svr" / "checkpoints" / "last.ckpt")
    del old["recon3d_autoencoder"]  # as recon3d 0.1 wrote it: the autoencoder named by path only
    torch.save(old, tmp_path / "old.ckpt")
    assert main(["reconstruct", str(_object_png(tmp_path)), "--ckpt", str(tmp_path / "old.ckpt"),
                 "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"its autoencoder {ae} does not exist" in err[0] and "old.ckpt" in err[0]
