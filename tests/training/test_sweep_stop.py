"""A sweep stopped by SIGTERM (a scheduler's stop; Ray's own handler dumped a stack and aborted, exit -6) saves its
state and exits 143 within seconds, with trials running and one pending, leaving no Ray process behind; the same
command resumes it, each unfinished trial from its last checkpoint and the pending one from the start."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_sweep_file

pytest.importorskip("ray", reason="Ray is installed with the dev extra: pip install -e '.[dev]'")


def test_sigterm_stops_the_sweep_with_its_state_saved_and_the_rerun_resumes_each_trial(tiny_shards, tmp_path,
                                                                                         launch):
    lrs = [1.0e-3, 2.0e-3, 3.0e-3]  # two run (max_concurrent 2), the third waits
    sweep = tiny_sweep_file(tmp_path / "stop.yaml", tiny_shards, "train.phase_epochs=[2,40]", scheduler="fifo",
                            num_samples=1, search_space={"train.lr": {"grid": lrs}})
    command = ["sweep", "-c", str(sweep)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = launch.recon3d_popen(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    trials = tmp_path / "sweeps" / "stop" / "trials"
    deadline = time.time() + 240
    while time.time() < deadline:
        logs = list(trials.glob("*/logs/version_0/metrics.csv"))
        if len(logs) == 2 and all(log.read_text().count("\n") > 12 for log in logs):
            break
        time.sleep(0.3)
    ray_processes = _descendants(proc.pid)
    assert len(ray_processes) >= 4, ray_processes  # Ray's daemons and the two trials' workers
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]  # seconds in practice; a hang (as when a trial waited) fails here
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    deadline = time.time() + 30
    while _alive(ray_processes) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(ray_processes), _alive(ray_processes)
    assert "SIGTERM: the sweep stopped and saved its state" in out and "SIGTERM received at time" not in out
    second = launch.recon3d(*command, env=env, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = json.loads((tmp_path / "sweeps" / "stop" / "trials.json").read_text())
    assert sorted(r["params"]["train.lr"] for r in rows) == lrs and {r["epoch"] for r in rows} == {41}
    segments = sorted(len(list((trial / "logs").iterdir())) for trial in trials.iterdir())
    assert segments == [1, 2, 2], segments  # the pending trial ran once, from the start
    for trial in trials.iterdir():  # the second segment starts where the first one's last checkpoint was
        if (trial / "logs" / "version_1").exists():
            resumed = (trial / "logs" / "version_1" / "metrics.csv").read_text().splitlines()
            assert int(resumed[1].split(",")[2]) > 0, resumed[:3]


def _descendants(pid: int) -> dict:
    """{pid: command} of every process below `pid` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found[child] = _command(child)
                frontier.append(child)
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return ""


def _alive(processes: dict) -> list:
    """The ones still running as the same program (a pid reused by another program does not count)."""
    return [cmd for pid, cmd in processes.items() if _command(pid) == cmd and cmd and
            "(zombie)" not in cmd and _state(pid) not in ("Z", "X", "")]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
