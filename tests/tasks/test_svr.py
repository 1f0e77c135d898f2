import pytest
import torch

from recon3d.errors import ConfigError
from recon3d.tasks.svr import SVRTask
from recon3d.training.run import run
from tests.conftest import tiny_config


def _svr_cfg(shards, ckpt, run_dir, *extra):
    return tiny_config(f"loader.shards={shards}", f"train.run_dir={run_dir}", "train.stage=svr",
                       f"svr.autoencoder_ckpt={ckpt}", "svr.base_width=4", "svr.epochs=2", "svr.lr=0.001",
                       "loader.train_samples_per_epoch=8", "train.accelerator=cpu", *extra)


def test_svr_trains_and_measures_in_shape_space(tiny_shards, trained_autoencoder, tmp_path):
    result = run(_svr_cfg(tiny_shards, trained_autoencoder, tmp_path), enable_wandb=False,
                 enable_progress_bar=False)
    assert result.global_step == 8
    for key in ("train/loss", "val/latent_mse", "val/iou", "val/fscore@1%"):
        assert key in result.metrics
    assert any(k.startswith("val/iou/") for k in result.metrics)  # per category
    task = SVRTask.load_from_checkpoint(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert task.eval().encoder(torch.rand(1, 1, 28, 28)).shape == (1, 16)


def test_svr_regresses_the_exported_codes(tiny_shards, trained_autoencoder, tmp_path):
    """The targets are the autoencoder's own codes of the pictured shapes, found by key."""
    from recon3d.data.loading.latents import read_latents

    cfg = _svr_cfg(tiny_shards, trained_autoencoder, tmp_path)
    from recon3d.data.loading.shards import load_manifest
    from recon3d.tasks.svr import SVRTask

    task = SVRTask.from_config(cfg, load_manifest(tiny_shards))
    task.setup("fit")
    keys, codes = read_latents(tiny_shards / "latents" / trained_autoencoder.parent.parent.name, "train")
    assert torch.allclose(task.targets(keys[:2]), torch.as_tensor(codes[:2]))
    with pytest.raises(KeyError, match="no latent code for sample 'nope/x'"):
        task.targets(["nope/x"])


def test_svr_config_errors_name_the_fix(tiny_shards, trained_autoencoder, tmp_path):
    with pytest.raises(ConfigError, match="reads the image pipeline of the loader, but loader.stage=autoencoder"):
        run(_svr_cfg(tiny_shards, trained_autoencoder, tmp_path, "loader.stage=autoencoder"), enable_wandb=False)
    with pytest.raises(ConfigError, match="svr.autoencoder_ckpt"):
        run(_svr_cfg(tiny_shards, "", tmp_path), enable_wandb=False)


def test_eval_svr_reports_per_category_on_held_out_views(tiny_shards, trained_autoencoder, tmp_path, capsys):
    import json

    from recon3d.cli.main import main

    result = run(_svr_cfg(tiny_shards, trained_autoencoder, tmp_path / "run", "loader.holdout_views=1",
                          "svr.epochs=1"), enable_wandb=False, enable_progress_bar=False)
    out = tmp_path / "eval"
    assert main(["eval-svr", "--ckpt", str(result.last_checkpoint), "--shards", str(tiny_shards), "--split", "train",
                 "--resolution", "8", "-o", str(out)]) == 0
    summary = json.loads((out / "eval_svr_train.json").read_text())
    assert {"car", "chair", "table"} <= set(summary) and "mean over shapes" in summary
    shapes = (out / "eval_svr_train_shapes.csv").read_text().splitlines()
    assert all(line.split(",")[2] == "2" for line in shapes[1:])  # view 2: the held-out one of 3
    assert 0 <= summary["mean over shapes"]["iou"] <= 1
    assert all(0 < values["iou_mean_shape"] <= 1 for values in summary.values())  # the baseline, per category


def test_voxel_iou_pools_whichever_grid_is_finer():
    import torch

    from recon3d.tasks.scores import voxel_iou

    voxels = torch.zeros(1, 1, 16, 16, 16)
    voxels[..., :8] = 1  # half the cube
    fine = torch.zeros(1, 32, 32, 32)
    fine[..., :16] = 1  # the same half at 32^3
    coarse = torch.zeros(1, 8, 8, 8)
    coarse[..., :2] = 1  # a quarter at 8^3
    assert voxel_iou(fine, voxels).tolist() == [1.0]
    assert voxel_iou(coarse, voxels).tolist() == [0.5]


def test_decode_occupancy_in_bounded_calls_matches_one_call_per_code():
    """Grouping codes and splitting grids into calls of `chunk` points must not mix codes or points up."""
    from recon3d.models.implicit_decoder import ImplicitDecoder
    from recon3d.tasks.decoding import cell_centres, decode_occupancy

    torch.manual_seed(0)
    decoder = ImplicitDecoder(latent_dim=8, decoder_widths=[16, 8])
    z = torch.randn(5, 8)
    with torch.no_grad():
        whole = torch.cat([decoder(cell_centres(8)[None], z[i:i + 1])[..., 0] for i in range(5)]).reshape(5, 8, 8, 8)
        for chunk in (100, 512, 1024, 2000, 0):  # splits a grid; one grid per call; 2 grids per call (3 calls)
            assert torch.allclose(decode_occupancy(decoder, z, 8, chunk=chunk), whole, atol=1e-6), chunk


def test_decode_occupancy_in_bf16_evaluates_the_points_near_the_threshold_again_in_fp32():
    from recon3d.models.implicit_decoder import ImplicitDecoder
    from recon3d.tasks.decoding import decode_occupancy

    torch.manual_seed(0)
    decoder = ImplicitDecoder(latent_dim=8, decoder_widths=[64, 32])
    z = torch.randn(3, 8)
    with torch.no_grad():
        exact = decode_occupancy(decoder, z, 8)
        rough = decode_occupancy(decoder, z, 8, dtype=torch.bfloat16, margin=0.0)  # bf16 alone
        assert not torch.allclose(rough, exact, atol=1e-6) and torch.allclose(rough, exact, atol=0.05)
        # a margin that takes in every point: all of them again in fp32
        assert torch.allclose(decode_occupancy(decoder, z, 8, dtype=torch.bfloat16, margin=2.0), exact, atol=1e-6)


def test_latents_of_another_autoencoder_are_refused(tiny_shards, trained_autoencoder, tmp_path):
    """A retrained autoencoder in a run folder of the same name finds the old run's codes by default."""
    other = tmp_path / trained_autoencoder.parent.parent.name / "checkpoints" / "last.ckpt"
    other.parent.mkdir(parents=True)
    state = torch.load(trained_autoencoder, weights_only=False)
    first = next(iter(state["state_dict"]))
    state["state_dict"][first] = state["state_dict"][first] + 1
    torch.save(state, other)
    with pytest.raises(ConfigError, match="these latents were exported from .* not from svr.autoencoder_ckpt="):
        run(tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={tmp_path / 'svr'}", "train.stage=svr",
                        f"svr.autoencoder_ckpt={other}", "train.accelerator=cpu"), enable_wandb=False)


def test_svr_cosine_schedule_decays_to_lr_final(tiny_shards, trained_autoencoder, tmp_path):
    """svr.lr_schedule=cosine: the image encoder's learning rate falls along the run to lr_final x lr (by steps
    here; by the clock when the run trains by time, as in the demo)."""
    import math

    from tests.tasks.test_autoencoder import _logged_lr

    run(_svr_cfg(tiny_shards, trained_autoencoder, tmp_path, "svr.lr_schedule=cosine", "svr.lr_final=0.1",
                 "train.log_every_steps=1"), enable_wandb=False, enable_progress_bar=False)
    lrs = _logged_lr(tmp_path)
    assert sorted(lrs) == list(range(8))
    assert lrs == pytest.approx({s: 0.001 * (0.1 + 0.45 * (1 + math.cos(math.pi * s / 8))) for s in lrs})
    with pytest.raises(ConfigError, match="svr.lr_schedule"):
        tiny_config("svr.lr_schedule=step")
