"""The SLURM side of recon3d: the sbatch templates installed with the package, a submit that creates the log folder
first (SLURM does not, and a job whose --output folder is missing fails without a log), and the whole method as a
chain of dependent jobs: autoencoder -> export-latents -> image encoder and latent GAN -> evaluation."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

TEMPLATES = Path(__file__).resolve().parent / "templates"
NAMES = ("train", "shards", "sweep")


def template(name: str) -> Path:
    """An installed template by name (train | shards | sweep) or a path to one."""
    path = Path(name)
    if path.is_file():
        return path
    if name in NAMES:
        return TEMPLATES / f"{name}.sbatch"
    raise FileNotFoundError(f"no SLURM template {name!r}: one of {', '.join(NAMES)} or a path")


def output_folder(sbatch_args: Sequence[str], script: Path | None) -> Path | None:
    """The folder of the job's log: --output/-o on the command line, else the script's #SBATCH --output."""
    found = ""
    for i, arg in enumerate(sbatch_args):
        if arg.startswith("--output="):
            found = arg.split("=", 1)[1]
        elif arg in ("-o", "--output") and i + 1 < len(sbatch_args):
            found = sbatch_args[i + 1]
    if not found and script is not None:
        match = re.search(r"^#SBATCH\s+(?:--output[= ]|-o\s*)(\S+)", script.read_text(), re.MULTILINE)
        found = match.group(1) if match else ""
    return Path(found).parent if found and "/" in found else None


def sbatch(sbatch_args: Sequence[str], script: Path | None = None, job_args: Sequence[str] = (),
           wrap: str = "") -> int:
    """Submit (creating the log folder first); the job id."""
    folder = output_folder(sbatch_args, script)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    command = ["sbatch", "--parsable", *sbatch_args]
    command += [f"--wrap={wrap}"] if wrap else [str(script), *job_args]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise FileNotFoundError("sbatch is not on PATH: run this on a SLURM login node") from None
    if done.returncode:
        raise ValueError(f"sbatch refused the job: {done.stderr.strip()}")
    return int(done.stdout.strip().split(";")[0])


def _after(*jobs: int) -> List[str]:
    """Start after every job succeeded; a failed one cancels this job instead of leaving it pending forever."""
    return [f"--dependency=afterok:{':'.join(map(str, jobs))}", "--kill-on-invalid-dep=yes"]


def _step(out: Path, name: str, command: str, cpus: int, extra: Sequence[str], after: Sequence[int]) -> int:
    """A one-task job running `command` after the RECON3D_ENV_SETUP hook."""
    args = [f"--job-name=recon3d-{name}", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}",
            f"--output={out / 'logs'}/%x-%j.out", "--open-mode=append", *_after(*after), *extra]
    script = f'eval "${{RECON3D_ENV_SETUP:-}}"; set -euo pipefail; {command}'
    return sbatch(args, wrap=f"exec bash -c {shlex.quote(script)}")  # --wrap runs /bin/sh


def submit_pipeline(*, shards: str, out: str, configs: Sequence[str] = (), stage_configs: Dict[str, str] = None,
                    overrides: Sequence[str] = (), nodes: int = 1, tasks_per_node: int = 1, cpus_per_task: int = 8,
                    sbatch_args: Sequence[str] = ()) -> Dict[str, int]:
    """Submit the chain; {job name: job id} in submission order. Each training job is slurm/train.sbatch with
    --run-dir <out>/<stage>; later stages name the autoencoder by its run folder, which hands on its best checkpoint
    (recon3d.runs.run_checkpoint). The latent GAN trains with DDP (two optimisers; DeepSpeed cannot)."""
    root = Path(out).resolve()
    stage_configs = stage_configs or {}
    q = shlex.quote
    train_sbatch = [f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", f"--cpus-per-task={cpus_per_task}",
                    f"--output={root / 'logs'}/%x-%j.out", *sbatch_args]

    def train(stage: str, after: Sequence[int], *extra: str) -> int:
        files = [*configs, *([stage_configs[stage]] if stage in stage_configs else [])]
        args = [a for f in files for a in ("-c", str(Path(f).resolve()) if Path(f).exists() else f)]
        args += ["--shards", shards, "--run-dir", str(root / stage), *overrides, f"train.stage={stage}", *extra]
        return sbatch([f"--job-name=recon3d-{stage}", *train_sbatch, *(_after(*after) if after else [])],
                      template("train"), args)

    jobs = {"autoencoder": train("autoencoder", [])}
    jobs["latents"] = _step(root, "latents", f"recon3d export-latents --ckpt {q(str(root / 'autoencoder'))} "
                            f"--shards {q(shards)}", cpus_per_task, sbatch_args, [jobs["autoencoder"]])
    ae = f"{root / 'autoencoder'}"
    jobs["svr"] = train("svr", [jobs["latents"]], f"svr.autoencoder_ckpt={ae}")
    ddp = ["train.strategy=ddp" if nodes * tasks_per_node > 1 else "train.strategy=auto", 'train.deepspeed_config=""']
    jobs["gan"] = train("gan", [jobs["latents"]], f"gan.autoencoder_ckpt={ae}", *ddp)
    evals = "; ".join(f"recon3d eval --ckpt {q(str(root / s))} --shards {q(shards)} -o {q(str(root / 'eval' / s))}"
                      for s in ("autoencoder", "svr", "gan"))
    jobs["eval"] = _step(root, "eval", evals, cpus_per_task, sbatch_args, [jobs["svr"], jobs["gan"]])
    return jobs
