"""SIGTERM outside SLURM: a checkpoint at the end of the step, exit 143, the rerun resumes there; W&B offline keeps
one run whose segments hold every step once; the preemption checkpoints are pruned."""

import os
import signal
import struct
import subprocess
import time
from pathlib import Path

from recon3d.tasks.checkpoints import read_checkpoint
from recon3d.training.callbacks import hpc_checkpoints, prune_hpc_checkpoints
from tests.conftest import TINY


def wandb_records(path: Path):
    """The protobuf Records of a .wandb file: W&B's 7-byte header, then LevelDB log blocks of 32 KiB whose chunks
    (7-byte header: crc32c, length, type full/first/middle/last) hold serialised wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _train_then_signal(launch, shards: Path, run_dir: Path, signum: int, wandb_mode: str, *extra: str):
    """`recon3d train` (62 epochs of 4 steps) in a process of its own, sent `signum` once its CSV log has 40 rows;
    the process, its output and the environment it ran in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_"))}
    env.update(WANDB_MODE=wandb_mode, OMP_NUM_THREADS="1")
    proc = launch.recon3d_popen("train", "-c", str(TINY), "--shards", str(shards), "--run-dir", str(run_dir),
                                "train.accelerator=cpu", "train.phase_epochs=[2,60]",
                                "loader.train_samples_per_epoch=8", *extra, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
    metrics = run_dir / "logs" / "version_0" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") > 40):
        time.sleep(0.2)
    proc.send_signal(signum)
    return proc, proc.communicate(timeout=120)[0], env


def test_sigterm_checkpoints_exits_143_and_wandb_offline_keeps_every_step_once(tiny_shards, tmp_path, launch):
    run_dir = tmp_path / "run"
    first, out, env = _train_then_signal(launch, tiny_shards, run_dir, signal.SIGTERM, "offline", "train.logger=wandb")
    assert first.returncode == 128 + signal.SIGTERM, out[-3000:]
    [hpc] = hpc_checkpoints(run_dir)
    saved = read_checkpoint(hpc)["global_step"]
    assert f"saved a checkpoint at step {saved} to {hpc}; the same command resumes from it" in out
    assert 0 < saved < 248
    second = launch.recon3d(*first.args[3:], env=env, timeout=300)  # the same command again
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 248  # 62 epochs x 4 steps
    segments = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(segments) == 2 and len({p.name for p in segments}) == 1  # one W&B run id, two segments
    steps, kinds = [], []
    for segment in segments:
        records = list(wandb_records(segment))
        kinds.append({r.WhichOneof("record_type") for r in records})
        for record in records:
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                if "train/loss" in items:
                    assert int(items["_step"]) == int(float(items["trainer/global_step"]))
                    steps.append(int(items["_step"]))
    assert steps == list(range(248))  # every training step once, in order, across the two segments
    assert "preempting" in kinds[0] and "preempting" not in kinds[1]


def test_only_the_newest_preemption_checkpoints_are_kept(tmp_path):
    for n in (1, 2, 3, 10):
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_bytes(b"x")
    (tmp_path / "hpc_ckpt_2.fp32.ckpt").write_bytes(b"x")  # consolidated beside a ZeRO folder
    (tmp_path / "hpc_ckpt_3.ckpt").unlink()
    (tmp_path / "hpc_ckpt_3.ckpt").mkdir()  # a ZeRO folder
    (tmp_path / "hpc_ckpt_3.ckpt" / "latest").write_text("tag")
    assert [p.name for p in hpc_checkpoints(tmp_path)] == ["hpc_ckpt_1.ckpt", "hpc_ckpt_2.ckpt", "hpc_ckpt_3.ckpt",
                                                           "hpc_ckpt_10.ckpt"]
    prune_hpc_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpc_ckpt_10.ckpt", "hpc_ckpt_3.ckpt"]


def test_ctrl_c_checkpoints_and_exits_130(tiny_shards, tmp_path, launch):
    proc, out, _ = _train_then_signal(launch, tiny_shards, tmp_path / "run", signal.SIGINT, "disabled")
    assert proc.returncode == 130, out[-3000:]
    assert "SIGINT: saved a checkpoint at step" in out and len(hpc_checkpoints(tmp_path / "run")) == 1


def test_the_requeue_signal_outside_training_is_noted_before_and_ignored_after(tiny_shards, tmp_path, monkeypatch):
    """In a SLURM job, USR1@90 can come during the setup (the training then checkpoints and requeues at its first
    step) or after the last step (ignored: its default action would fail a job whose training had ended; seen in CI
    when a fast machine finished training before the signal came)."""
    import pytest

    from recon3d.training.callbacks import Preempted, requeue_signal_outside_training
    from recon3d.training.run import run
    from tests.conftest import tiny_config

    bin_dir = tmp_path / "bin"  # a stand-in scontrol that records the requeue instead of calling a controller
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.txt'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in dict(SLURM_JOB_ID="77", SLURM_JOB_NAME="recon3d-train", SLURM_NTASKS="1", SLURM_PROCID="0",
                           SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="localhost").items():
        monkeypatch.setenv(key, value)
    cfg = tiny_config(f"loader.shards={tiny_shards}", f"train.run_dir={tmp_path / 'run'}", "train.accelerator=cpu",
                      "train.phase_epochs=[1,1]")
    try:
        with pytest.raises(Preempted) as stop:
            with requeue_signal_outside_training():
                os.kill(os.getpid(), signal.SIGUSR1)  # during the setup
                run(cfg, enable_wandb=False, enable_progress_bar=False)
        assert (stop.value.signum, stop.value.step) == (signal.SIGUSR1, 1)
        assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "77"]
        assert read_checkpoint(stop.value.checkpoint)["global_step"] == 1
        os.kill(os.getpid(), signal.SIGUSR1)  # after: ignored (this process would die of it otherwise)
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def test_a_signal_that_reaches_one_rank_stops_every_rank_at_the_same_step(tiny_shards, tmp_path, launch):
    """On a cluster each node signals its own tasks, not at the same instant (CI's two-node job saw one rank note
    SIGTERM): here only rank 1 of two local DDP ranks gets it; rank 0 learns of it at the step's end, both save the
    one checkpoint together and exit 143."""
    import psutil

    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_"))}
    env.update(OMP_NUM_THREADS="1")
    proc = launch.recon3d_popen("train", "-c", str(TINY), "--shards", str(tiny_shards), "--run-dir", str(run_dir),
                                "train.accelerator=cpu", "train.devices=2", "train.phase_epochs=[2,60]",
                                "loader.train_samples_per_epoch=8", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
    metrics = run_dir / "logs" / "version_0" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") > 20):
        time.sleep(0.2)
    # Lightning starts rank 1 as a child of rank 0; rank 1's loader workers would be its children, not rank 0's
    children = psutil.Process(proc.pid).children()
    ranks = [p for p in children if p.environ().get("LOCAL_RANK") == "1"]
    assert len(ranks) == 1, [(p.pid, p.cmdline()) for p in children]
    ranks[0].send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert out.count("SIGTERM received") == 1 and f"(pid {ranks[0].pid})" in out, out[-3000:]
    [hpc] = hpc_checkpoints(run_dir)
    saved = read_checkpoint(hpc)["global_step"]
    assert out.count(f"SIGTERM: saved a checkpoint at step {saved} to {hpc}") == 2, out[-3000:]  # each rank's exit
    assert 0 < saved < 124  # 62 epochs x 2 steps (8 samples over 2 ranks at batch 2)


def test_checkpoints_are_written_beside_themselves_not_in_tmpdir(tmp_path, monkeypatch):
    """With $TMPDIR unusable (a full /tmp) a checkpoint is still saved: its temp file is in the run folder."""
    import tempfile

    import torch

    from recon3d.training.callbacks import AtomicCheckpointIO

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # mkstemp fails there
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    target.parent.mkdir(parents=True)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    assert torch.load(target)["state_dict"]["w"].sum() == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temp file left


def test_a_full_disk_names_the_checkpoint_not_a_temp_file(tmp_path, monkeypatch):
    import errno
    import os

    import pytest
    import torch

    from recon3d.training import callbacks

    def full(obj, f):  # torch.save on a full disk: its zip writer's RuntimeError
        Path(f).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(callbacks.torch, "save", full)
    monkeypatch.setattr(callbacks.os, "statvfs", lambda p: os.statvfs_result((4096, 4096, 1, 0, 0, 0, 0, 0, 0, 255)))
    target = tmp_path / "checkpoints" / "last.ckpt"
    target.parent.mkdir()
    with pytest.raises(OSError) as caught:
        callbacks.AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1)}, target)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(target.parent.iterdir()) == []  # the temp file is gone
