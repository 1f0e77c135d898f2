"""The method's own recipe (configs/recipes/imnet/) carries the method's numbers: each one checked against the
released code it comes from, and the recipe submits as a chain, the image encoder and the GAN after the export."""

import pytest

from recon3d.config import load_config
from tests.conftest import REPO

RECIPES = REPO / "configs" / "recipes" / "imnet"
PT = "czq142857/IM-NET-pytorch"  # the improved release in PyTorch: recon3d's default networks are its networks
TF = "czq142857/IM-NET"  # the improved release in TensorFlow 1, whose IMGAN/ holds the latent GAN
# (files, config key, the method's value, where it is said)
METHOD = [
    (["autoencoder"], "model.latent_dim", 256, f"{PT} modelAE.py: self.z_dim = 256"),
    (["autoencoder"], "model.encoder_channels", 32, f"{PT} modelAE.py: self.ef_dim = 32"),
    (["autoencoder"], "model.decoder_widths", [1024, 1024, 1024, 512, 256, 128],
     f"{PT} modelAE.py: gf_dim = 128, linear_1..6 of gf_dim x 8, 8, 8, 4, 2, 1"),
    (["autoencoder"], "model.decoder_output", "leaky_clip",
     f"{PT} modelAE.py: torch.max(torch.min(l7, l7*0.01+0.99), l7*0.01)"),
    (["autoencoder"], "train.point_resolutions", [16, 32, 64], f"{PT} README.md: --sample_vox_size 16, 32, 64"),
    (["autoencoder"], "train.phase_epochs", [200, 200, 200], f"{PT} README.md and train_ae.sh: --epoch 200 each"),
    (["autoencoder"], "loader.batch_size", 32, f"{PT} modelAE.py: self.shape_batch_size = 32"),
    (["autoencoder"], "loader.points_per_sample", 4096, f"{PT} modelAE.py: self.point_batch_size = 16*16*16"),
    (["autoencoder"], "train.lr", 5e-5, f"{PT} main.py (f45d185): --learning_rate default 0.00005"),
    (["autoencoder"], "train.beta1", 0.5, f"{PT} main.py: --beta1 default 0.5"),
    (["autoencoder"], "train.beta2", 0.999, f"{PT} modelAE.py: Adam betas=(config.beta1, 0.999)"),
    (["autoencoder"], "train.lr_schedule", "constant", f"{PT} modelAE.py: no scheduler"),
    (["autoencoder", "svr"], "svr.architecture", "resnet18",
     f"{PT} modelSVR.py: img_encoder of 8 resnet_blocks (2 per width, 4 widths)"),
    (["autoencoder", "svr"], "svr.base_width", 64, f"{PT} modelSVR.py: self.img_ef_dim = 64"),
    (["autoencoder", "svr"], "svr.epochs", 1000, f"{PT} README.md: --svr --train --epoch 1000"),
    (["autoencoder", "svr"], "loader.batch_size", 64, f"{PT} modelSVR.py: self.shape_batch_size = 64"),
    (["autoencoder", "svr"], "loader.crop_size", 128, f"{PT} modelSVR.py: self.crop_size = 128"),
    (["autoencoder", "svr"], "loader.grayscale", True, f"{PT} modelSVR.py: pixels reshaped to [.., 1, crop, crop]"),
    (["autoencoder", "svr"], "svr.lr", 5e-5, f"{PT} main.py (f45d185): --learning_rate default 0.00005"),
    (["autoencoder", "svr"], "svr.beta1", 0.5, f"{PT} main.py: --beta1 default 0.5"),
    (["autoencoder", "svr"], "svr.beta2", 0.999, f"{PT} modelSVR.py: Adam betas=(config.beta1, 0.999)"),
    (["autoencoder", "gan"], "gan.noise_dim", 128, f"{TF} IMGAN/modelz.py: ZGAN(z_dim=128)"),
    (["autoencoder", "gan"], "gan.generator_widths", [2048, 2048], f"{TF} IMGAN/modelz.py: gf_dim=2048, g_1, g_2"),
    (["autoencoder", "gan"], "gan.critic_widths", [2048, 2048], f"{TF} IMGAN/modelz.py: df_dim=2048, d_1, d_2"),
    (["autoencoder", "gan"], "gan.n_critic", 1, f"{TF} IMGAN/modelz.py: one d_optim then one g_optim per batch"),
    (["autoencoder", "gan"], "gan.gp_weight", 10.0, f"{TF} IMGAN/modelz.py: tf.square(ddx - 1.0) * 10.0"),
    (["autoencoder", "gan"], "gan.lr", 5e-5, f"{TF} IMGAN/main.py: learning_rate 0.00005"),
    (["autoencoder", "gan"], "gan.beta1", 0.5, f"{TF} IMGAN/main.py: beta1 0.5"),
    (["autoencoder", "gan"], "gan.beta2", 0.999, f"{TF} IMGAN/modelz.py: AdamOptimizer(lr, beta1) (TF's beta2)"),
    (["autoencoder", "gan"], "gan.batch_size", 50, f"{TF} IMGAN/modelz.py: batch_size = 50"),
    (["autoencoder", "gan"], "gan.epochs", 10000, f"{TF} README.md and IMGAN/main.py: --epoch 10000"),
    (["autoencoder", "gan"], "gan.ema_decay", 0.0, f"{TF} IMGAN/modelz.py: samples from the generator itself"),
    (["shapenet13"], "source.categories",
     ["airplane", "bench", "cabinet", "car", "chair", "display", "lamp", "loudspeaker", "rifle", "sofa",
      "table", "telephone", "watercraft"],
     f"{PT} README.md: the 13 ShapeNet categories (3D-R2N2's: synsets 02691156 ... 04530566)"),
    (["shapenet13"], "render.views", 24, f"{PT} modelSVR.py: self.view_num = 24"),
    (["shapenet13"], "render.image_size", 137, f"{PT} modelSVR.py: self.view_size = 137"),
    (["shapenet13"], "geometry.voxel_resolution", 64, f"{PT} modelAE.py: self.input_size = 64"),
    (["shapenet13"], "geometry.point_counts", [4096, 8192, 32768],
     f"{TF} point_sampling/2_gather_256vox_16_32_64.py: 16^3 points at 16, 2 x 16^3 at 32, 32^3 at 64"),
]


@pytest.mark.parametrize("files, key, value, source", METHOD, ids=[f"{m[0][-1]}:{m[1]}" for m in METHOD])
def test_the_recipe_carries_the_methods_number(files, key, value, source):
    cfg = load_config([RECIPES / f"{name}.yaml" for name in files])
    section, field = key.split(".")
    assert getattr(getattr(cfg, section), field) == value, source


@pytest.mark.parametrize("stage, per_rank", [("autoencoder", 4), ("svr", 8)])
def test_eight_gpus_keep_the_global_batch_and_the_learning_rate(stage, per_rank):
    files = [RECIPES / "autoencoder.yaml"] + ([RECIPES / "svr.yaml"] if stage == "svr" else [])
    one, eight = load_config(files), load_config([*files, RECIPES / f"8-gpus-{stage}.yaml"])
    assert eight.train.devices == 8 and eight.loader.batch_size == per_rank
    assert eight.train.devices * eight.loader.batch_size == one.loader.batch_size  # the global batch
    assert (eight.train.lr, eight.svr.lr) == (one.train.lr, one.svr.lr)


def test_the_recipe_submits_as_a_chain(tiny_shards, tmp_path, monkeypatch):
    """`recon3d slurm pipeline -c autoencoder.yaml --stage-config svr=svr.yaml --stage-config gan=gan.yaml`: each
    stage's job gets the autoencoder's file and its own, after the export for the two that learn from it."""
    from recon3d.cluster import slurm

    submitted = []
    monkeypatch.setattr(slurm, "sbatch", lambda args, script=None, job_args=(), wrap="": submitted.append(
        (list(args), list(job_args), wrap)) or len(submitted))
    jobs = slurm.submit_pipeline(
        shards=str(tiny_shards), out=str(tmp_path / "imnet"), configs=[str(RECIPES / "autoencoder.yaml")],
        stage_configs={"svr": str(RECIPES / "svr.yaml"), "gan": str(RECIPES / "gan.yaml")},
        stages=["autoencoder", "svr", "gan"], sbatch_args=["--gpus-per-node=1"])
    assert list(jobs) == ["autoencoder", "latents", "svr", "gan", "eval"]
    for stage, own in (("autoencoder", None), ("svr", "svr.yaml"), ("gan", "gan.yaml")):
        args = submitted[jobs[stage] - 1][1]
        files = [args[i + 1] for i, a in enumerate(args) if a == "-c"]
        wanted = [RECIPES / "autoencoder.yaml", *([RECIPES / own] if own else [])]
        assert files == [str(path.resolve()) for path in wanted], stage
        assert f"train.stage={stage}" in args
    assert "--gpus-per-node=1" in submitted[jobs["svr"] - 1][0]
    assert "train.strategy=auto" in submitted[jobs["gan"] - 1][1]  # two optimisers: never DeepSpeed
