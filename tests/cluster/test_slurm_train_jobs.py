"""slurm/train.sbatch on the two-node test bed: DDP and DeepSpeed ZeRO-2 across node1 and node2, preemption by
SIGTERM (scontrol requeue) and by the time-limit signal, and the template's own checks."""

import time
from pathlib import Path

import pytest

from recon3d.tasks.checkpoints import read_checkpoint
from tests.cluster.conftest import job_log, recording_launcher, submit_train

pytestmark = pytest.mark.slurm
SHORT = ("train.accelerator=cpu", "loader.train_samples_per_epoch=8")


def _ranks(log: str) -> dict:
    """{rank: the banner line it printed}."""
    lines = [line for line in log.splitlines() if line.startswith("recon3d: rank ")]
    return {int(line.split()[2].split("/")[0]): line for line in lines}


def _steps(metrics: Path) -> list:
    """The steps of the training rows of a CSV log."""
    rows = metrics.read_text().splitlines()
    header = rows[0].split(",")
    cells = [row.split(",") for row in rows[1:]]
    return [int(c[header.index("step")]) for c in cells if c[header.index("train/loss")]]


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_stage_2"])
def test_two_nodes_train_one_model_with_a_rank_on_each(cluster, tiny_shards, tmp_path, strategy):
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    run_dir = tmp_path / "run"
    launcher, launched = recording_launcher(tmp_path)  # as a container's `apptainer exec --nv IMAGE` would wrap
    job = submit_train(cluster, tmp_path, "two", "--shards", str(tiny_shards), "--run-dir", str(run_dir), *SHORT,
                       f"train.strategy={strategy}", nodes=2, env=launcher)
    state = cluster.wait(job, timeout=400)[job]
    log = job_log(tmp_path, "two-*.out")
    assert state == "COMPLETED", log[-4000:]
    steps = sorted(launched.read_text().splitlines())  # every rank's step went through the launcher
    assert [line.split()[:3] for line in steps] == [["node1", "0", "recon3d"], ["node2", "1", "recon3d"]], steps
    ranks = _ranks(log)
    assert sorted(ranks) == [0, 1], log[-4000:]
    assert " on node1 (node 0" in ranks[0] and " on node2 (node 1" in ranks[1]
    assert all("rendezvous node1:" in line for line in ranks.values())  # Lightning's pick from the node list
    if len(cluster.cpus[0]) == 1 and cluster.cpus[0] != cluster.cpus[1]:  # task/affinity bound each to its CPU
        assert ranks[0].endswith(f"CPUs {cluster.cpus[0][0]}") and ranks[1].endswith(f"CPUs {cluster.cpus[1][0]}")
    # 8 samples per epoch over 2 ranks at batch 2: 2 steps per epoch, 2 epochs; one rank at batch 4 does the same
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert "recon3d: epoch 1 done at step 4 in" in log and "Epoch 1:" not in log  # a line per epoch, no bar
    if strategy == "ddp":
        one = tmp_path / "one"
        job = submit_train(cluster, tmp_path, "one", "--shards", str(tiny_shards), "--run-dir", str(one), *SHORT,
                           "loader.batch_size=4")
        assert cluster.wait(job, timeout=300)[job] == "COMPLETED", job_log(tmp_path, "one-*.out")[-3000:]
        assert read_checkpoint(one / "checkpoints" / "last.ckpt")["global_step"] == 4


def _wait_for_training(run_dir: Path, log, rows: int = 12) -> None:
    metrics = run_dir / "logs" / "version_0" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.is_file() and metrics.read_text().count("\n") > rows:
            return
        time.sleep(0.5)
    pytest.fail("training did not start: " + log()[-3000:])


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_stage_2"])
def test_sigterm_preemption_checkpoints_every_rank_and_the_requeued_job_resumes_there(cluster, tiny_shards,
                                                                                      tmp_path, strategy):
    """`scontrol requeue` is what a PreemptMode=REQUEUE preemption does: SIGTERM to every task, SIGKILL after
    KillWait, the job back in the queue with the same id."""
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    run_dir = tmp_path / "run"
    job = submit_train(cluster, tmp_path, "term", "--shards", str(tiny_shards), "--run-dir", str(run_dir), *SHORT,
                       "train.phase_epochs=[2,30]", f"train.strategy={strategy}", nodes=2)
    _wait_for_training(run_dir, lambda: job_log(tmp_path, "term-*.out"))
    cluster.run("scontrol", "requeue", str(job))
    cluster.release_requeued(job)
    state = cluster.wait(job, timeout=400)[job]
    log = job_log(tmp_path, "term-*.out")
    assert state == "COMPLETED", log[-6000:]
    assert "restart 1" in log, log[-4000:]
    # each node's slurmd signals its own task: a rank whose SIGTERM comes after the others agreed to stop saves and
    # stops with them without having noted it (CI saw one "received" line), so one such line is what is certain
    assert log.count("SIGTERM received") >= 1, log[-4000:]
    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in hpc] == ["hpc_ckpt_1.ckpt"], log[-4000:]
    saved = read_checkpoint(hpc[0])["global_step"]
    assert log.count(f"step {saved} saved to {hpc[0]}") == 1  # one collective save, reported by rank 0
    assert f"SIGTERM: saved a checkpoint at step {saved} to {hpc[0]}" in log
    assert 0 < saved < 64
    steps = _steps(run_dir / "logs" / "version_1" / "metrics.csv")
    assert saved <= min(steps) <= saved + 1  # went on from the step it saved: nothing lost, nothing redone
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 64  # 32 epochs x 2 steps


def test_time_limit_signal_checkpoints_requeues_itself_and_resumes(cluster, tiny_shards, tmp_path):
    """--signal=USR1@90 before the time limit: the ranks save, rank 0 requeues the job (SLURM would not). 122
    epochs, so that the signal lands inside training even on a fast machine (CI's finished 16 before it came)."""
    run_dir = tmp_path / "run"
    job = submit_train(cluster, tmp_path, "usr1", "--shards", str(tiny_shards), "--run-dir", str(run_dir), *SHORT,
                       "train.phase_epochs=[2,120]")
    _wait_for_training(run_dir, lambda: job_log(tmp_path, "usr1-*.out"))
    cluster.run("scancel", "--signal=USR1", str(job))
    cluster.release_requeued(job)
    state = cluster.wait(job, timeout=400)[job]
    log = job_log(tmp_path, "usr1-*.out")
    assert state == "COMPLETED", log[-6000:]
    assert "restart 1" in log and f"requeued SLURM job {job}" in log, log[-4000:]
    saved = read_checkpoint(run_dir / "hpc_ckpt_1.ckpt")["global_step"]
    assert saved <= min(_steps(run_dir / "logs" / "version_1" / "metrics.csv")) <= saved + 1
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 488


def test_the_time_limit_signal_after_the_last_step_lets_the_job_complete(cluster, tiny_shards, tmp_path):
    """USR1 while the process writes its summary and exits: the training is over, nothing to save or requeue (its
    default action failed the job)."""
    job = submit_train(cluster, tmp_path, "late", "--shards", str(tiny_shards), "--run-dir", str(tmp_path / "run"),
                       *SHORT)
    deadline = time.time() + 300
    while time.time() < deadline and "`Trainer.fit` stopped" not in job_log(tmp_path, "late-*.out"):
        time.sleep(0.05)
    cluster.run("scancel", "--signal=USR1", str(job))
    state = cluster.wait(job, timeout=120)[job]
    log = job_log(tmp_path, "late-*.out")
    assert state == "COMPLETED" and cluster.job(job)["Restarts"] == "0", log[-4000:]
