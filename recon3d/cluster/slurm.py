"""The SLURM side of recon3d: the sbatch templates installed with the package (templates/), a submit that creates the
log folder first (SLURM does not, and a job whose --output folder is missing fails without a log), and the stage
table as a chain of dependent jobs: the stages that train on the shards, the export of latents, the stages that learn
from them, the evaluation."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from recon3d.data.loading.shards import load_manifest, unmet_needs
from recon3d.stages import STAGES, Stage, latents_exporter, stage

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


def _step(out: Path, name: str, commands: Sequence[str], cpus: int, extra: Sequence[str], after: Sequence[int]
          ) -> int:
    """A one-task job running `commands` (shell lines, each a recon3d command) in turn after the RECON3D_ENV_SETUP
    hook, each through RECON3D_LAUNCHER when set (as the templates run their srun steps)."""
    args = [f"--job-name=recon3d-{name}", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}",
            f"--output={out / 'logs'}/%x-%j.out", "--open-mode=append", *_after(*after), *extra]
    launched = "; ".join(f"${{RECON3D_LAUNCHER:-}} {command}" for command in commands)
    script = f'eval "${{RECON3D_ENV_SETUP:-}}"; set -euo pipefail; {launched}'
    return sbatch(args, wrap=f"exec bash -c {shlex.quote(script)}")  # --wrap runs /bin/sh


def chain_stages(shards: str, stages: Sequence[str] = ()) -> List[str]:
    """The stages a chain trains: `stages` (checked against the table), else every stage of the table whose input
    the shards hold when their manifest can be read now (right-eye views for stereo, say), else every stage."""
    for name in stages:
        stage(name)  # ValueError naming the stages for an unknown one
    if stages:
        return list(stages)
    if "://" in shards or shards.startswith("pipe:"):  # remote: not read at submit time; the user chooses
        return list(STAGES)
    try:
        manifest = load_manifest(shards)
    except (OSError, ValueError):  # not built yet (a shards array may still be running)
        return list(STAGES)
    return [name for name, row in STAGES.items() if not (row.loader and unmet_needs(manifest, row.loader))]


def submit_pipeline(*, shards: str, out: str, configs: Sequence[str] = (), stage_configs: Dict[str, str] = None,
                    overrides: Sequence[str] = (), nodes: int = 1, tasks_per_node: int = 1, cpus_per_task: int = 8,
                    sbatch_args: Sequence[str] = (), stages: Sequence[str] = ()) -> Dict[str, int]:
    """Submit the chain of the stage table; {job name: job id} in submission order. Each training job is the train
    template with --run-dir <out>/<stage>: the stages that train on the shards alone start at once; the export of
    latents waits for the stage that exports them, and the stages that learn from those latents wait for it, naming
    the exporter by its run folder (which hands on its best checkpoint, recon3d.runs.run_checkpoint); a stage that
    DeepSpeed cannot train (two optimisers) trains with DDP. The eval job waits for every training job.

    Raises:
        ValueError: an unknown stage, or a stage that learns from latents without the stage that exports them.
    """
    root = Path(out).resolve()
    chosen = [STAGES[name] for name in chain_stages(shards, stages)]
    exporter = next((row.name for row in chosen if row.exports_latents), "")
    learners = [row for row in chosen if row.learns_from]
    if learners and not exporter:
        raise ValueError(f"{learners[0].name} learns from exported latents: chain it with {latents_exporter()}")
    train = _trainer(root, shards, configs, stage_configs or {}, overrides,
                     [f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", f"--cpus-per-task={cpus_per_task}",
                      f"--output={root / 'logs'}/%x-%j.out", *sbatch_args], multi=nodes * tasks_per_node > 1)
    jobs = {row.name: train(row, []) for row in chosen if not row.learns_from}
    if learners:
        export = f"recon3d export-latents --ckpt {shlex.quote(str(root / exporter))} --shards {shlex.quote(shards)}"
        jobs["latents"] = _step(root, "latents", [export], cpus_per_task, sbatch_args, [jobs[exporter]])
        for row in learners:
            jobs[row.name] = train(row, [jobs["latents"]], f"{row.learns_from}.autoencoder_ckpt={root / exporter}")
    evals = [f"recon3d eval --ckpt {shlex.quote(str(root / row.name))} --shards {shlex.quote(shards)} "
             f"-o {shlex.quote(str(root / 'eval' / row.name))}" for row in chosen]
    jobs["eval"] = _step(root, "eval", evals, cpus_per_task, sbatch_args, [jobs[row.name] for row in chosen])
    return jobs


def _trainer(root: Path, shards: str, configs: Sequence[str], stage_configs: Dict[str, str], overrides: Sequence[str],
             sbatch_args: List[str], multi: bool) -> Callable[..., int]:
    """A function submitting one stage's training job (the train template) after the jobs `after`."""
    def train(row: Stage, after: Sequence[int], *extra: str) -> int:
        files = [*configs, *([stage_configs[row.name]] if row.name in stage_configs else [])]
        args = [a for f in files for a in ("-c", str(Path(f).resolve()) if Path(f).exists() else f)]
        args += ["--shards", shards, "--run-dir", str(root / row.name), *overrides, f"train.stage={row.name}", *extra]
        if not row.deepspeed:  # Lightning's DeepSpeed strategy takes one optimiser
            args += ["train.strategy=ddp" if multi else "train.strategy=auto", 'train.deepspeed_config=""']
        return sbatch([f"--job-name=recon3d-{row.name}", *sbatch_args, *(_after(*after) if after else [])],
                      template("train"), args)

    return train
