"""SIGTERM on the other stages (image encoder, latent GAN, VRN, stereo): a checkpoint at the end of the step, exit
143, and the rerun goes on from that step to the end of the schedule."""

import os
import signal
import subprocess
import time

import pytest

from recon3d.tasks.checkpoints import read_checkpoint
from recon3d.training.callbacks import hpc_checkpoints
from tests.conftest import GAN_TINY, STEREO_TINY, TINY, VRN_TINY

STAGES = {  # stage: (shards fixture, overrides, epochs x steps per epoch)
    "svr": ("tiny_shards", ("train.stage=svr", "svr.base_width=4", "svr.epochs=40",
                            "loader.train_samples_per_epoch=4", "train.accelerator=cpu"), 40 * 2),
    "gan": ("tiny_shards", ("train.stage=gan", *GAN_TINY, "gan.epochs=300"), 300 * 6),  # 4 critic + 2 generator
    "vrn": ("stereo_shards", (*VRN_TINY, "vrn.epochs=60"), 60 * 2),
    "stereo": ("stereo_shards", (*STEREO_TINY, "stereo.epochs=60"), 60 * 2),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sigterm_checkpoints_every_stage_and_the_rerun_finishes_from_there(stage, request, trained_autoencoder,
                                                                        tmp_path, launch):
    fixture, overrides, total = STAGES[stage]
    shards = request.getfixturevalue(fixture)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_"))}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    command = ["train", "-c", str(TINY), "--shards", str(shards), "--run-dir", str(run_dir), *overrides,
               f"svr.autoencoder_ckpt={trained_autoencoder}", f"gan.autoencoder_ckpt={trained_autoencoder}"]
    proc = launch.recon3d_popen(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    metrics = run_dir / "logs" / "version_0" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") > 6):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    [hpc] = hpc_checkpoints(run_dir)
    saved = read_checkpoint(hpc)["global_step"]
    assert 0 < saved < total and f"saved a checkpoint at step {saved}" in out, out[-3000:]
    second = launch.recon3d(*command, env=env, timeout=300)
    log = second.stdout + second.stderr
    assert second.returncode == 0 and f"Restoring states from the checkpoint path at {hpc}" in log, log[-3000:]
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == total
