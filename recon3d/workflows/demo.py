"""The main job: procedural shapes (or the user's meshes) -> shards -> every stage of the stage table (the
autoencoder, its exported latents, the image encoder and latent GAN learning from them, VRN, Deep3D) -> evaluation,
meshes and pictures -> report.html, in one run folder.

The demo has a time budget (demo.minutes) shared among its steps by demo.shares: a training stage trains until its
share of what is left is spent (its epochs are only an upper bound), so a faster machine trains more in the same time
and what a stage leaves unused goes to the stages after it. Every step records its result, budget and time in
<run>/stages.json when it finishes; a rerun skips finished steps and the training stages continue from their
last.ckpt (Lightning's timer included), so a killed demo resumes where it stopped. The steps, their default shares
and each stage's settings, evaluation and pictures come from the stage table (recon3d/stages.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch

from recon3d.config import Config, load_config, to_dict, with_overrides
from recon3d.data.loading.shards import first_split, load_manifest
from recon3d.data.tools.contact_sheet import contact_sheet
from recon3d.data.tools.verify import summarise, verify_shards
from recon3d.data.writing.writer import build_shards
from recon3d.files import atomic_write
from recon3d.geometry.procedural import write_procedural_meshes
from recon3d.inference.autoencoder import export_latents
from recon3d.inference.splits import sheet_keys
from recon3d.stages import STAGES, demo_steps, latents_exporter
from recon3d.training.allocation import check_accelerator
from recon3d.training.build import wandb_upload_command
from recon3d.training.lineage import evaluation_artifact, latents_artifact, model_artifact, record_job, shards_artifact
from recon3d.training.run import run
from recon3d.workflows.report import write_report

DEFAULTS = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # the demo's embedded configuration
GPU_PROFILE = DEFAULTS.with_name("demo-gpu.yaml")  # layered over DEFAULTS where the demo runs on a GPU
JOBS = "wandb-jobs"  # folder of the W&B runs of the steps that do not train (exporting latents, evaluating)


def demo_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                cuda_available: bool | None = None) -> Config:
    """The demo's configuration: its embedded defaults, the GPU profile where it applies (demo.profile: auto takes
    it where CUDA is visible and train.accelerator is not cpu), then the user's files and overrides; demo.profile
    holds the profile chosen, for config.json and the report."""
    cfg = load_config([DEFAULTS, *files], overrides)
    wanted = cfg.demo.profile
    if wanted == "auto":
        cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
        wanted = "gpu" if cuda and cfg.train.accelerator != "cpu" else "cpu"
    layers = [DEFAULTS, GPU_PROFILE] if wanted == "gpu" else [DEFAULTS]
    return load_config([*layers, *files], [*overrides, f"demo.profile={wanted}"])


def trained_stages() -> List[str]:
    """The demo's steps that train: every stage of the table, in its order."""
    return list(STAGES)


class StageLog:
    """<run>/stages.json: per finished stage, its seconds and what it produced (rewritten atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stages: Dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}

    def done(self, name: str) -> bool:
        return name in self.stages

    def spent_minutes(self) -> float:
        """Minutes the finished stages took, the report's aside (a rerun writes the report again)."""
        return sum(info["seconds"] for step, info in self.stages.items() if step != "report") / 60

    def finish(self, name: str, seconds: float, **info) -> None:
        self.stages[name] = {"seconds": round(seconds, 1), **info}
        atomic_write(self.path, json.dumps(self.stages, indent=1).encode())


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stage_minutes(cfg: Config, log: "StageLog", name: str) -> float:
    """Stage `name`'s time: its share of what is left of demo.minutes among the stages not finished yet (a training
    stage gets at least a quarter of a minute once the budget is spent)."""
    shares = {step: cfg.demo.shares.get(step, 0.0) for step in demo_steps()}
    waiting = sum(share for step, share in shares.items() if step == name or not log.done(step) or step == "report")
    left = cfg.demo.minutes - log.spent_minutes()  # the stage itself is not finished (or is the report)
    floor = 0.25 if name in STAGES else 0.0
    return max(floor, left * shares[name] / waiting if waiting > 0 else left)


def stage_config(cfg: Config, run_dir: Path, name: str, minutes: float, exported: str = "") -> Config:
    """The configuration of training stage `name` in the demo: the demo's settings with the stage's own (its row's
    demo_overrides), its run folder and its time limit; a stage that learns from an autoencoder gets the checkpoint
    `exported` (the one whose latents were exported). Call once the shards exist."""
    row = STAGES[name]
    train = dataclasses.replace(cfg.train, stage=name, run_dir=str(run_dir / name), max_minutes=minutes)
    cfg = dataclasses.replace(cfg, train=train,
                              loader=dataclasses.replace(cfg.loader, shards=str(run_dir / "shards"), stage=""))
    learned = [f"{row.learns_from}.autoencoder_ckpt={exported}"] if row.learns_from else []
    return with_overrides(cfg, [*row.demo_overrides, *learned])


def _train(cfg: Config, progress: bool) -> dict:
    # one process trains at a time here: let it use every core (`make` exports OMP_NUM_THREADS=1 for the tests)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))

    result = run(cfg, enable_progress_bar=progress)
    # the later stages use what the run hands on: its best checkpoint by the stage's validation metric (with minutes
    # of training on a few shapes the last one can be a noisy dip), or its last where its row says so (the GAN)
    return {"epoch": result.epoch, "step": result.global_step, "checkpoint": str(result.handed_on),
            "last_checkpoint": str(result.last_checkpoint),
            "selected_by": "last" if result.handed_on == result.last_checkpoint else result.monitor,
            "metrics": {k: v for k, v in result.metrics.items() if k.startswith("val/")}}


def _evaluate(cfg: Config, run_dir: Path, chosen: Dict[str, str]) -> dict:
    """Each trained stage's tables and pictures on the test split (else val, else train) through its inference
    module: evaluate() with its row's demo_eval keywords, write_sheets() with its demo_sheets keywords, the same
    test shapes on every sheet, taken in turn from each category."""
    shards, out = run_dir / "shards", run_dir / "evaluation"
    split = first_split(load_manifest(shards), ("test", "val", "train"))  # the shards step made sure of train
    keys = sheet_keys(shards, split, cfg.demo.sheet_shapes)
    for name in trained_stages():
        row = STAGES[name]
        inference = row.inference_module()
        inference.evaluate(chosen[name], shards, split=split, out_dir=out, **row.demo_eval(cfg))
        inference.write_sheets(chosen[name], shards, split=split, keys=keys, out_dir=out, **row.demo_sheets(cfg))
    return {"folder": str(out), "split": split}


def _latents(cfg: Config, run_dir: Path, exporter: str, checkpoint: str) -> dict:
    """Export the codes of every shape from the checkpoint of stage `exporter`; W&B: that model -> the latents."""
    folder = export_latents(checkpoint, run_dir / "shards")
    record_job(cfg, "export-latents", "latents", lambda: [model_artifact(exporter, checkpoint)],
               lambda: [latents_artifact(folder, checkpoint)], run_dir / JOBS)
    return {"folder": str(folder)}


def _evaluated(cfg: Config, run_dir: Path, chosen: Dict[str, str]) -> dict:
    """The evaluation; W&B: the shards and every stage's model -> the evaluation tables."""
    info = _evaluate(cfg, run_dir, chosen)
    record_job(cfg, "evaluation", "evaluation",
               lambda: [shards_artifact(run_dir / "shards"), *(model_artifact(s, chosen[s]) for s in chosen)],
               lambda: [evaluation_artifact(run_dir.name, Path(info["folder"]))], run_dir / JOBS)
    return info


def _shards_stage(cfg: Config, run_dir: Path, progress: bool) -> dict:
    """Build (or finish) the shards, verify every member, write the contact sheet."""
    result = build_shards(cfg, progress=progress)
    splits = result.manifest.get("splits", {})
    if not splits.get("train", {}).get("samples"):
        rejects = result.manifest.get("rejects", 0)
        raise ValueError(f"{cfg.source.root}: no shape to train on ({result.manifest['samples']} sample(s) made, "
                         f"{rejects} input(s) rejected; reasons in {Path(cfg.shards.out_dir) / 'rejects.jsonl'})")
    report = verify_shards(cfg.shards.out_dir)
    if not report.ok:
        raise RuntimeError(f"{cfg.shards.out_dir}: verify found {len(report.problems)} problem(s), first: "
                           f"{report.problems[0]}")
    contact_sheet(cfg.shards.out_dir, run_dir / "contact_sheet.png", count=min(10, result.manifest["samples"]))
    _say(summarise(cfg.shards.out_dir))
    return {"samples": result.manifest["samples"], "rejects": result.manifest.get("rejects", 0)}


def _run_stages(cfg: Config, log: StageLog, work: Dict[str, Callable[[float], dict]]) -> None:
    """Run every stage not finished in an earlier run (the report always), announcing each with its share of the
    budget and the time left; each gets its minutes (the training stages train for them)."""
    steps = demo_steps()
    for number, name in enumerate(steps, 1):
        if name == "report" or not log.done(name):
            minutes = stage_minutes(cfg, log, name)
            kind = "trains for" if name in STAGES else "about"
            left = cfg.demo.minutes - log.spent_minutes()
            _say(f"[{number}/{len(steps)}] {name}: {kind} {minutes:.1f} min ({left:.1f} of the demo's "
                 f"{cfg.demo.minutes:g} min left)")
            stage_started = time.perf_counter()
            info = work[name](minutes)
            log.finish(name, time.perf_counter() - stage_started, budget_seconds=round(minutes * 60, 1), **info)
        else:
            _say(f"[{number}/{len(steps)}] {name}: done in an earlier run ({log.stages[name]['seconds']:.0f} s)")


def _check_same_source(run_dir: Path, log: "StageLog", root: str) -> None:
    """A demo folder resumes only from the shapes it was made from: its finished stages learnt from them.

    Raises:
        ValueError: the folder's shards were built from another source.
    """
    saved = run_dir / "config.json"
    if not log.done("shards") or not saved.is_file():
        return
    before = json.loads(saved.read_text()).get("source", {}).get("root", "")
    if before and Path(before).resolve() != Path(root).resolve():
        raise ValueError(f"{run_dir} was made from {before}; its finished stages learnt from those shapes, not "
                         f"from {root}: give another --out (or delete {run_dir} to start it over)")


def run_demo(cfg: Config, meshes: str = "", progress: bool = True) -> int:
    """Run (or resume) the whole method in cfg.demo.out_dir; returns a process exit code."""
    check_accelerator(cfg)  # before any step: a CPU config in a GPU job, or cuda where there is none
    run_dir = Path(cfg.demo.out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir}: a file, not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = StageLog(run_dir / "stages.json")
    demo = cfg.demo
    source_root = Path(meshes) if meshes else run_dir / "meshes"
    cfg = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, root=str(source_root)),
                              shards=dataclasses.replace(cfg.shards, out_dir=str(run_dir / "shards"),
                                                         samples_per_shard=demo.samples_per_shard))
    _check_same_source(run_dir, log, cfg.source.root)
    atomic_write(run_dir / "config.json", json.dumps(to_dict(cfg), indent=1, sort_keys=True).encode())
    started = time.perf_counter()

    stages = trained_stages()
    exporter = latents_exporter()

    def checkpoint(stage: str) -> str:
        """The checkpoint a finished training stage handed on (its best by its validation metric, or its last)."""
        return log.stages[stage]["checkpoint"]

    def trained(name: str, minutes: float) -> dict:
        exported = checkpoint(exporter) if STAGES[name].learns_from else ""
        return _train(stage_config(cfg, run_dir, name, minutes, exported), progress)

    work: Dict[str, Callable[[float], dict]] = {
        "meshes": lambda _: {"source": str(source_root), "written": 0 if meshes else write_procedural_meshes(
            source_root, demo.categories, demo.shapes_per_category)},
        "shards": lambda _: _shards_stage(cfg, run_dir, progress),
        "latents": lambda _: _latents(cfg, run_dir, exporter, checkpoint(exporter)),
        "evaluate": lambda _: _evaluated(cfg, run_dir, {name: checkpoint(name) for name in stages}),
        "report": lambda _: {"path": str(write_report(run_dir))},
        **{name: (lambda minutes, name=name: trained(name, minutes)) for name in stages},
    }
    _run_stages(cfg, log, work)
    total = sum(i["seconds"] for i in log.stages.values()) / 60
    print(f"\nrun folder: {run_dir} ({time.perf_counter() - started:.0f} s this run; {total:.1f} min in all, budget "
          f"{demo.minutes:g} min)")
    print(f"report: {log.stages['report']['path']}")
    for name in (*stages, JOBS):
        upload = wandb_upload_command(run_dir / name)
        if upload:
            print(f"W&B ran offline; to upload: {upload}")
    return 0
