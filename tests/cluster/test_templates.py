"""The sbatch templates' own logic, run by bash with SLURM's variables set and a stand-in srun that prints what it
was asked to start (no cluster needed)."""

import os
import subprocess
from pathlib import Path

import pytest

from recon3d.cluster.slurm import NAMES, output_folder, template
from tests.conftest import REPO


def _run_template(name: str, tmp_path: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "srun").write_text('#!/bin/bash\necho "srun $* SRUN_CPUS_PER_TASK=$SRUN_CPUS_PER_TASK"\n')
    (fake / "srun").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_"))}
    return subprocess.run(["bash", str(template(name)), *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**base, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", **env})


def test_train_template_refuses_more_tasks_than_gpus(tmp_path):
    done = _run_template("train", tmp_path, {"SLURM_NTASKS_PER_NODE": "2", "SLURM_GPUS_ON_NODE": "1"})
    assert done.returncode == 2 and "2 tasks per node but only 1 GPU(s): use --ntasks-per-node=1" in done.stderr


def test_train_template_warns_about_idle_gpus_and_hands_the_cpus_to_srun(tmp_path):
    env = {"SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_CPUS_PER_TASK": "6", "RECON3D_ENV_SETUP": "export MARK=set-up"}
    done = _run_template("train", tmp_path, env, "-c", "x.yaml")
    assert done.returncode == 0, done.stderr
    assert "4 GPUs per node but 1 task(s): training uses 1 of them" in done.stderr
    assert ("srun --kill-on-bad-exit=1 recon3d train -c x.yaml train.devices=1 train.num_nodes=2 "
            "SRUN_CPUS_PER_TASK=6") in done.stdout


def test_env_hook_runs_before_anything(tmp_path):
    env = {"SLURM_NTASKS_PER_NODE": "1", "RECON3D_ENV_SETUP": "echo hook-ran; srun() { echo hooked-srun; }"}
    done = _run_template("train", tmp_path, env)
    assert done.stdout.splitlines()[0] == "hook-ran" and "hooked-srun" in done.stdout


@pytest.mark.parametrize("name", NAMES)
def test_templates_are_installed_with_the_package_and_carry_the_site_lines(name):
    text = template(name).read_text()
    assert template(name).parent == REPO / "recon3d" / "cluster" / "templates"
    assert (REPO / "slurm" / f"{name}.sbatch").is_file()  # through the repository's slurm/ link
    assert "##SBATCH --partition=" in text and "##SBATCH --account=" in text
    assert 'eval "${RECON3D_ENV_SETUP:-}"' in text and "SRUN_CPUS_PER_TASK" in text
    assert "WANDB_MODE" not in text  # train.wandb_mode decides
    assert output_folder([], template(name)) == Path("logs")
    assert output_folder(["-o", "runs/x/%j.out"], template(name)) == Path("runs/x")


def test_the_launcher_hook_prefixes_the_training_step(tmp_path):
    env = {"SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "1",
           "RECON3D_LAUNCHER": "apptainer exec --nv /images/recon3d.sif"}
    done = _run_template("train", tmp_path, env, "-c", "x.yaml")
    assert done.returncode == 0, done.stderr
    assert ("srun --kill-on-bad-exit=1 apptainer exec --nv /images/recon3d.sif recon3d train -c x.yaml "
            "train.devices=2 train.num_nodes=1") in done.stdout
