"""The two-node cluster, started once for the tests of this folder and stopped after them."""

import os
import sys
from pathlib import Path

import pytest

from tests.cluster.local_slurm import LocalSlurm, missing
from tests.conftest import REPO, TINY


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, launch):
    absent = missing()
    if absent:
        pytest.skip(f"no local SLURM here (missing: {', '.join(absent)}); .ci/run installs Debian's slurm-wlm")
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=2).start()
    yield slurm
    slurm.stop()


def job_env(**extra: str) -> dict:
    """Jobs find the recon3d of this interpreter's environment first; W&B off unless a test turns it on."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "WANDB_MODE": "disabled",
            **extra}


def job_log(folder: Path, pattern: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob(pattern)))


def submit_train(cluster, tmp_path: Path, name: str, *train_args: str, nodes: int = 1, tasks: int = 1,
                 sbatch_args=("--cpus-per-task=1",), env=None) -> int:
    """slurm/train.sbatch on the tiny config (one CPU per task), its log in tmp_path/<name>-<job>.out."""
    return cluster.sbatch(f"--nodes={nodes}", f"--ntasks-per-node={tasks}",
                          f"--output={tmp_path}/{name}-%j.out", *sbatch_args, str(REPO / "slurm" / "train.sbatch"),
                          "-c", str(TINY), *train_args, cwd=tmp_path, env={**job_env(), **(env or {})})


def recording_launcher(folder: Path) -> tuple:
    """A stand-in for a container launcher (RECON3D_LAUNCHER): a script that records where it ran and what it
    wrapped, one line per step ("<host> <SLURM_PROCID> <command>"), then runs it. (environment, record path)."""
    record, script = folder / "launched.txt", folder / "launcher.sh"
    script.write_text(f'#!/bin/bash\necho "$(hostname) ${{SLURM_PROCID:-}} $*" >> {record}\nexec "$@"\n')
    script.chmod(0o755)
    return {"RECON3D_LAUNCHER": str(script)}, record
