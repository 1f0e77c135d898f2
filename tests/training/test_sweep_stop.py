"""A sweep stopped by SIGTERM (a scheduler's stop; Ray's own handler dumped a stack and aborted, exit -6) saves its
state and exits 143; the same command resumes it, each unfinished trial from its last checkpoint."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import tiny_sweep_file

pytest.importorskip("ray", reason="Ray is installed with the dev extra: pip install -e '.[dev]'")


def test_sigterm_stops_the_sweep_with_its_state_saved_and_the_rerun_resumes_each_trial(tiny_shards, tmp_path,
                                                                                         launch):
    sweep = tiny_sweep_file(tmp_path / "stop.yaml", tiny_shards, "train.phase_epochs=[2,40]", scheduler="fifo",
                            num_samples=1, search_space={"train.lr": {"grid": [1.0e-3, 2.0e-3]}})
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
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "SIGTERM: the sweep stopped and saved its state" in out and "SIGTERM received at time" not in out
    second = launch.recon3d(*command, env=env, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = json.loads((tmp_path / "sweeps" / "stop" / "trials.json").read_text())
    assert sorted(r["params"]["train.lr"] for r in rows) == [1.0e-3, 2.0e-3] and {r["epoch"] for r in rows} == {41}
    for trial in trials.iterdir():  # the second segment starts where the first one's last checkpoint was
        resumed = (trial / "logs" / "version_1" / "metrics.csv").read_text().splitlines()
        assert int(resumed[1].split(",")[2]) > 0, resumed[:3]
