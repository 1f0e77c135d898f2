"""Shared fixtures: a tiny world (procedural shapes, 16^3 voxels, small renders, a few shards) in a temp dir; and the
two tiers: a test that starts other processes goes through the `launch` fixture (tests/system.py), which marks it
`system` (make test-all only); any other test that starts one fails at once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from recon3d.config import load_config
from tests.system import Launch, system_process

REPO = Path(__file__).resolve().parents[1]
# The tests train on the CPU (their configs pin train.accelerator=cpu, for speed and determinism): in a GPU job, hide
# its GPUs from them and from the processes they start, or the accelerator check would refuse every CPU run
os.environ.pop("SLURM_GPUS_ON_NODE", None)
os.environ["CUDA_VISIBLE_DEVICES"] = ""
SHARED = Path(os.environ.get("RECON3D_SHARED", REPO.parent / "shared"))
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def launch() -> Launch:
    """The door to other processes (tests/system.py): a test that uses it, directly or through another fixture, is a
    system test and runs in `make test-all` only."""
    return Launch()


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "launch" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.system)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_system_process(request, monkeypatch):
    """In a test not marked `system`, starting recon3d, a rank, a daemon, Ray or a browser fails, naming the door."""
    if request.node.get_closest_marker("system"):
        return
    start = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        kind = system_process(args, kwargs.get("shell", False))
        if kind:
            pytest.fail(f"{request.node.nodeid} starts {kind} ({str(args)[:160]}) outside tests/system.py: a test "
                        f"that starts processes asks for the `launch` fixture, which makes it a system test "
                        f"(make test-all)", pytrace=False)
        start(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: reference data from ../shared is not available here")
    return path


def tiny_config(*overrides: str):
    return load_config([TINY], list(overrides))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for gloo rendezvous, SLURM daemons, a Ray head)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_sweep_file(path: Path, shards: Path, *overrides: str, **spec) -> Path:
    """A sweep file of short tiny-config trials on `shards` (and `overrides`), storing under path's folder; `spec`
    adds or replaces sweep keys (scheduler, num_samples, search_space, ...)."""
    import yaml

    base = {"base": [str(TINY)], "metric": "val/iou", "mode": "max", "max_concurrent": 2, "resources": {"cpu": 1},
            "overrides": [f"loader.shards={shards}", "train.accelerator=cpu", "loader.train_samples_per_epoch=8",
                          "train.logger=csv", *overrides],
            "storage": str(path.parent / "sweeps")}
    path.write_text(yaml.safe_dump({**base, **spec}))
    return path


@pytest.fixture(scope="session")
def tiny_meshes(tmp_path_factory) -> Path:
    from recon3d.geometry.procedural import write_procedural_meshes

    root = tmp_path_factory.mktemp("meshes")
    write_procedural_meshes(root, ["chair", "table", "car"], 4)
    return root


@pytest.fixture(scope="session")
def tiny_shards(tiny_meshes, tmp_path_factory) -> Path:
    """12 procedural shapes in shards of 2 samples (several shards per split)."""
    from recon3d.data.writing.writer import build_shards

    out = tmp_path_factory.mktemp("shards")
    cfg = tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={out}", "shards.samples_per_shard=2",
                      "shards.split=[0.5,0.25,0.25]")
    build_shards(cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_autoencoder(tiny_shards, tmp_path_factory) -> Path:
    """A tiny autoencoder trained for two short epochs on tiny_shards, its latents exported; the last.ckpt path."""
    from recon3d.inference.autoencoder import export_latents
    from recon3d.training.run import run

    run_dir = tmp_path_factory.mktemp("ae")
    cfg = tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={run_dir}", "loader.train_samples_per_epoch=8",
                      "train.accelerator=cpu")
    ckpt = run(cfg, enable_wandb=False, enable_progress_bar=False).last_checkpoint
    export_latents(ckpt, tiny_shards)
    return ckpt


GAN_TINY = ("gan.noise_dim=8", "gan.generator_widths=[32]", "gan.critic_widths=[32]", "gan.n_critic=2",
            "gan.batch_size=4", "gan.epochs=2", "gan.samples_per_epoch=16", "gan.eval_samples=6",
            "gan.eval_points=64", "train.accelerator=cpu")


@pytest.fixture(scope="session")
def trained_gan(tiny_shards, trained_autoencoder, tmp_path_factory) -> Path:
    """A tiny latent GAN trained briefly on trained_autoencoder's codes; its last.ckpt path."""
    from recon3d.training.run import run

    run_dir = tmp_path_factory.mktemp("gan")
    cfg = tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={run_dir}", "train.stage=gan",
                      f"gan.autoencoder_ckpt={trained_autoencoder}", *GAN_TINY)
    return run(cfg, enable_wandb=False, enable_progress_bar=False).last_checkpoint


@pytest.fixture(scope="session")
def trained_svr(tiny_shards, trained_autoencoder, tmp_path_factory) -> Path:
    """A tiny image encoder trained briefly against trained_autoencoder's codes; its last.ckpt path."""
    from recon3d.training.run import run

    run_dir = tmp_path_factory.mktemp("svr")
    cfg = tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={run_dir}", "train.stage=svr",
                      f"svr.autoencoder_ckpt={trained_autoencoder}", "svr.base_width=4",
                      "svr.epochs=1", "loader.train_samples_per_epoch=4", "train.accelerator=cpu")
    return run(cfg, enable_wandb=False, enable_progress_bar=False).last_checkpoint


@pytest.fixture(scope="session")
def stereo_shards(tiny_meshes, tmp_path_factory) -> Path:
    """tiny_shards' shapes with right-eye views (baseline 0.1) at 64 px and 32^3 voxels, for the VRN and stereo
    stages."""
    from recon3d.data.writing.writer import build_shards

    out = tmp_path_factory.mktemp("stereo_shards")
    cfg = tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={out}", "shards.samples_per_shard=3",
                      "shards.split=[0.5,0.25,0.25]", "render.stereo_baseline=0.1", "render.image_size=64",
                      "render.supersample=2", "geometry.voxel_resolution=32", "geometry.fine_resolution=64",
                      "geometry.padding=2")
    build_shards(cfg, progress=False)
    return out


VRN_TINY = ("train.stage=vrn", "loader.crop_size=48", "loader.volume_depth=8",
            "vrn.stacks=2", "vrn.width=8", "vrn.hourglass_levels=2", "vrn.epochs=1", "vrn.lr=0.003",
            "loader.train_samples_per_epoch=4", "train.accelerator=cpu")
STEREO_TINY = ("train.stage=stereo", "loader.crop_size=48", "stereo.widths=[4,8]",
               "stereo.disparity_levels=9", "stereo.disparity_max=8", "stereo.epochs=1",
               "loader.train_samples_per_epoch=4", "train.accelerator=cpu")


@pytest.fixture(scope="session")
def trained_vrn(stereo_shards, tmp_path_factory) -> Path:
    from recon3d.training.run import run

    cfg = tiny_config(f"loader.shards={stereo_shards}", f"train.run_dir={tmp_path_factory.mktemp('vrn')}", *VRN_TINY)
    return run(cfg, enable_wandb=False, enable_progress_bar=False).last_checkpoint


@pytest.fixture(scope="session")
def trained_stereo(stereo_shards, tmp_path_factory) -> Path:
    from recon3d.training.run import run

    cfg = tiny_config(f"loader.shards={stereo_shards}", f"train.run_dir={tmp_path_factory.mktemp('stereo')}",
                      *STEREO_TINY, "loader.grayscale=false")
    return run(cfg, enable_wandb=False, enable_progress_bar=False).last_checkpoint
