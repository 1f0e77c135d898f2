"""What the allocation gives a run against what its config asks for, checked before any work: SLURM's tasks and
nodes against train.devices and train.num_nodes, and the GPUs a job was given against train.accelerator (a config
that would train on the CPU of a GPU job, or asks for CUDA where none is visible, stops with one line naming both).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Tuple

import torch

from recon3d.config import Config
from recon3d.errors import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")


def allocated_gpus(environ: Optional[Mapping[str, str]] = None) -> Tuple[int, str]:
    """(count, the variable that says so) of the GPUs this process was given: SLURM_GPUS_ON_NODE in a SLURM job,
    else the devices CUDA_VISIBLE_DEVICES lists (Ray sets it for a trial); (0, "") when neither gives any."""
    env = os.environ if environ is None else environ
    slurm = env.get("SLURM_GPUS_ON_NODE", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm), f"SLURM_GPUS_ON_NODE={slurm}"
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    devices = [d for d in visible.split(",") if d.strip() not in ("", "-1", "NoDevFiles")]
    return (len(devices), f"CUDA_VISIBLE_DEVICES={visible}") if devices else (0, "")


def trains_on_gpu(train) -> bool:
    """Whether train.accelerator (a TrainConfig's) puts training on a GPU here: gpu/cuda, or auto with one visible."""
    return train.accelerator in GPU_ACCELERATORS or (train.accelerator == "auto" and torch.cuda.is_available())


def check_accelerator(cfg: Config, environ: Optional[Mapping[str, str]] = None,
                      cuda_available: Optional[bool] = None) -> None:
    """train.accelerator against the machine: cpu in a job that was given GPUs, or gpu where no CUDA device is
    visible, is a ConfigError naming both (auto follows the machine and always passes).

    Raises:
        ConfigError: the mismatch, with the setting to change.
    """
    env = os.environ if environ is None else environ
    accelerator = cfg.train.accelerator
    gpus, where = allocated_gpus(env)
    if accelerator == "cpu" and gpus:
        raise ConfigError(f"train.accelerator=cpu, but this job was given {gpus} GPU(s) ({where}): set "
                          f"train.accelerator=auto (or gpu), or hide them (CUDA_VISIBLE_DEVICES= ) to train on the CPU")
    if accelerator in GPU_ACCELERATORS:
        visible = torch.cuda.is_available() if cuda_available is None else cuda_available
        if not visible:
            said = where or "CUDA_VISIBLE_DEVICES=" + env.get("CUDA_VISIBLE_DEVICES", "(unset)")
            raise ConfigError(f"train.accelerator={accelerator}, but no CUDA device is visible here ({said}): set "
                              f"train.accelerator=auto (or cpu), or run it where a GPU is")


def check_trial_gpus(cfg: Config, gpus_per_trial: float) -> None:
    """A sweep's trials against their base config: GPUs for each trial while the config trains on the CPU, or a
    GPU accelerator with none per trial, is a ConfigError naming both."""
    if cfg.train.accelerator == "cpu" and gpus_per_trial > 0:
        raise ConfigError(f"the sweep gives each trial {gpus_per_trial:g} GPU(s) (resources.gpu) but its config "
                          f"trains on the CPU (train.accelerator=cpu): set train.accelerator=auto, or resources.gpu=0")
    if cfg.train.accelerator in GPU_ACCELERATORS and gpus_per_trial <= 0:
        raise ConfigError(f"train.accelerator={cfg.train.accelerator} but the sweep gives each trial no GPU "
                          f"(resources.gpu=0): set resources.gpu (or auto), or train.accelerator=auto")


def check_slurm(cfg: Config, environ=None) -> None:
    """Inside a SLURM allocation, tasks per node must equal train.devices and nodes train.num_nodes (Lightning starts
    one process per task); say so before any work instead of failing inside Lightning."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return
    tasks = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "").split("(")[0]
    if tasks and tasks.isdigit() and int(tasks) != cfg.train.devices:
        raise ConfigError(f"SLURM runs {tasks} task(s) per node but train.devices={cfg.train.devices}: set "
                          f"train.devices={tasks} or #SBATCH --ntasks-per-node={cfg.train.devices}")
    nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    if nodes and nodes.isdigit() and int(nodes) != cfg.train.num_nodes:
        raise ConfigError(f"SLURM allocated {nodes} node(s) but train.num_nodes={cfg.train.num_nodes}: set "
                          f"train.num_nodes={nodes} or #SBATCH --nodes={cfg.train.num_nodes}")
