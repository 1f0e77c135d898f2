"""The sbatch templates on a real single-node SLURM (started here as root, stopped by pid afterwards)."""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.cluster.slurm import LocalSlurm, missing
from tests.conftest import REPO, TINY, free_port, tiny_sweep_file

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    absent = missing()
    if absent:
        pytest.skip(f"no local SLURM here (missing: {', '.join(absent)}); .ci/run installs Debian's slurm-wlm")
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2).start()
    yield slurm
    slurm.stop()


def _env() -> dict:
    """Jobs find the recon3d of this interpreter's environment first."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "WANDB_MODE": "disabled"}


def _log(folder: Path, pattern: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob(pattern)))


def _submit_train(cluster, tmp_path: Path, name: str, *train_args: str, tasks: int = 1, sbatch_args=()) -> int:
    """slurm/train.sbatch on the tiny config, one CPU per task, its log in tmp_path/<name>-<job>.out."""
    return cluster.sbatch(f"--ntasks-per-node={tasks}", "--cpus-per-task=1", f"--output={tmp_path}/{name}-%j.out",
                          *sbatch_args, str(REPO / "slurm" / "train.sbatch"), "-c", str(TINY), *train_args,
                          cwd=tmp_path, env=_env())


def test_train_sbatch_runs_a_two_task_ddp_job(cluster, tiny_shards, tmp_path):
    run_dir = tmp_path / "run"
    job = _submit_train(cluster, tmp_path, "train", "--shards", str(tiny_shards), "--run-dir", str(run_dir),
                        "train.accelerator=cpu", "train.strategy=ddp", "loader.train_samples_per_epoch=8", tasks=2)
    state = cluster.wait(job, timeout=400)[job]
    log = _log(tmp_path, "train-*.out")
    assert state == "COMPLETED", log[-4000:]
    assert "on 1 node(s) x 2 task(s)" in log and "MEMBER: 2/2" in log  # Lightning saw both ranks
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # 8 samples per epoch over 2 ranks, batch 2: 2 steps per epoch, 2 epochs
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_train_sbatch_refuses_more_tasks_than_gpus(cluster, tmp_path):
    job = _submit_train(cluster, tmp_path, "bad", tasks=2, sbatch_args=["--export=ALL,SLURM_GPUS_ON_NODE=1"])
    assert cluster.wait(job, timeout=120)[job] == "FAILED"
    assert "2 tasks per node but only 1 GPU(s): use --ntasks-per-node=1" in _log(tmp_path, "bad-*.out")


@pytest.mark.parametrize("strategy", ["auto", "deepspeed_stage_2"])
def test_preempted_job_checkpoints_requeues_and_resumes_at_the_same_step(cluster, tiny_shards, tmp_path, strategy):
    """With DeepSpeed the checkpoints are ZeRO folders; read_checkpoint reads them through their fp32 file."""
    from recon3d.tasks.checkpoints import read_checkpoint

    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    run_dir = tmp_path / "run"
    job = _submit_train(cluster, tmp_path, "requeue", "--shards", str(tiny_shards), "--run-dir", str(run_dir),
                        "train.accelerator=cpu", "train.phase_epochs=[2,14]", "loader.train_samples_per_epoch=8",
                        f"train.strategy={strategy}")
    metrics = run_dir / "logs" / "version_0" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until training is well under way
        if metrics.is_file() and metrics.read_text().count("\n") > 12:
            break
        time.sleep(0.5)
    else:
        pytest.fail("training did not start: " + _log(tmp_path, "requeue-*.out")[-3000:])
    cluster.run("scancel", "--signal=USR1", str(job))  # what --signal=USR1@90 sends before the time limit
    deadline = time.time() + 120
    while time.time() < deadline:  # SLURM holds a requeued job for a while; release it at once to save test time
        info = cluster.run("scontrol", "show", "job", str(job))
        if "Restarts=1" in info and "JobState=PENDING" in info:
            cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
            break
        time.sleep(0.5)
    assert cluster.wait(job, timeout=400)[job] == "COMPLETED"
    log = _log(tmp_path, "requeue-*.out")
    assert "restart 1" in log, log[-4000:]
    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert hpc, log[-4000:]
    saved_step = read_checkpoint(hpc[-1])["global_step"]
    assert 0 < saved_step < 64
    resumed = (run_dir / "logs" / "version_1" / "metrics.csv").read_text().splitlines()
    header = resumed[0].split(",")
    rows = [row.split(",") for row in resumed[1:]]
    # training rows only: a save that lands after an epoch's last batch but before its validation resumes with that
    # validation, which Lightning logs at the epoch's last step (saved_step - 1)
    steps = [int(row[header.index("step")]) for row in rows if row[header.index("train/loss")]]
    assert steps and min(steps) >= saved_step  # the requeued job went on from the saved step, not from zero
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 64  # 16 x 4


def test_shards_array_writes_disjoint_parts_then_merges_and_verifies(cluster, tiny_meshes, tmp_path):
    out = tmp_path / "shards"
    cluster.sbatch("--array=0-1", "--cpus-per-task=1", "--mem=1G", f"--output={tmp_path}/shards-%A_%a.out",
                         str(REPO / "slurm" / "shards.sbatch"), str(tiny_meshes), str(out), "-c", str(TINY),
                         "shards.samples_per_shard=2", cwd=tmp_path, env=_env())
    deadline = time.time() + 400
    while time.time() < deadline and not (out / "manifest.json").is_file():
        time.sleep(1)
    while time.time() < deadline and cluster.run("squeue", "-h").strip():  # the merge job's verify step
        time.sleep(1)
    logs = _log(tmp_path, "shards-*.out") + _log(out, "merge-*.log")
    assert (out / "manifest.json").is_file(), logs[-4000:]
    assert "part 0/2" in logs and "part 1/2" in logs
    assert ": OK" in _log(out, "merge-*.log"), logs[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 12 and len(manifest["shards"]) == len(list(out.glob("*.tar")))


def test_sweep_sbatch_runs_a_ray_tune_sweep_inside_the_allocation(cluster, tiny_shards, tmp_path):
    pytest.importorskip("ray", reason="Ray is installed with the dev extra")
    sweep = tiny_sweep_file(tmp_path / "slurm-sweep.yaml", tiny_shards, scheduler="fifo", num_samples=2,
                            search_space={"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}})
    job = cluster.sbatch("--nodes=1", "--cpus-per-task=2", "--mem=2G", f"--output={tmp_path}/sweep-%j.out",
                         str(REPO / "slurm" / "sweep.sbatch"), "-c", str(sweep), cwd=tmp_path,
                         env={**_env(), "RAY_PORT": str(free_port())})
    state = cluster.wait(job, timeout=400)[job]
    log = _log(tmp_path, "sweep-*.out")
    assert state == "COMPLETED", log[-4000:]
    assert "Ray head on localhost" in log
    trials = json.loads((tmp_path / "sweeps" / "slurm-sweep" / "trials.json").read_text())
    assert len(trials) == 2 and all(t["val/iou"] is not None for t in trials)

