"""SIGTERM during the demo's training: the stage checkpoints at the step, the demo exits 143 with one line, and the
same command resumes and finishes."""

import signal
import subprocess
import time

from tests.conftest import TINY
from tests.workflows.test_demo import DEMO_TINY


def test_sigterm_in_the_demo_saves_and_the_rerun_finishes(tmp_path, launch):
    out = tmp_path / "run"
    # the autoencoder trains by time here (far more epochs than its share of the minute allows)
    cmd = ["demo", "-c", str(TINY), "--out", str(out), "--workers", "1", "--no-progress", *DEMO_TINY,
           "train.phase_epochs=[1000,1000]", "demo.minutes=1"]
    process = launch.recon3d_popen(*cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in process.stderr:  # a signal during the stage's setup is kept for its first step, so any moment works
        seen.append(line)
        if "autoencoder: trains" in line:
            break
    time.sleep(5)
    process.send_signal(signal.SIGTERM)
    err = "".join(seen) + process.communicate(timeout=300)[1]
    assert process.returncode == 143, err[-3000:]
    assert "SIGTERM: saved a checkpoint at step" in err and "Traceback" not in err, err[-3000:]
    assert list((out / "autoencoder").glob("hpc_ckpt_*.ckpt"))
    done = launch.recon3d(*cmd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "autoencoder: done in an earlier run" not in done.stderr  # it resumed the stage and finished it
    assert (out / "report.html").is_file()
