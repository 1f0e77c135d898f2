"""The main job: procedural shapes (or the user's meshes) -> shards -> autoencoder -> latents -> image encoder and
latent GAN -> evaluation, meshes and pictures -> report.html, in one run folder.

The demo has a time budget (demo.minutes) shared among its stages by demo.shares: a training stage trains until its
share of what is left is spent (its epochs are only an upper bound), so a faster machine trains more in the same time
and what a stage leaves unused goes to the stages after it. Every stage records its result, budget and time in
<run>/stages.json when it finishes; a rerun skips finished stages and the training stages continue from their
last.ckpt (Lightning's timer included), so a killed demo resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict

from recon3d.config import DEMO_SHARES, Config, to_dict
from recon3d.files import atomic_write
from recon3d.geometry.procedural import write_procedural_meshes

DEFAULTS = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # the demo's embedded configuration
STEPS = list(DEMO_SHARES)  # the demo's steps, in order
JOBS = "wandb-jobs"  # folder of the W&B runs of the steps that do not train (exporting latents, evaluating)
TRAINED = ("autoencoder", "svr", "gan", "vrn", "stereo")  # the steps that train (for their share of the budget)


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


def first_split(shard_dir: Path, order=("test", "val", "train")) -> str:
    """The first split of `order` that holds samples (small user folders may leave test or val empty)."""
    from recon3d.data.loading.shards import load_manifest

    splits = load_manifest(shard_dir)["splits"]
    return next(s for s in order if splits.get(s, {}).get("samples", 0))


def stage_minutes(cfg: Config, log: "StageLog", name: str) -> float:
    """Stage `name`'s time: its share of what is left of demo.minutes among the stages not finished yet (a training
    stage gets at least a quarter of a minute once the budget is spent)."""
    shares = {step: cfg.demo.shares.get(step, 0.0) for step in STEPS}
    waiting = sum(share for step, share in shares.items() if step == name or not log.done(step) or step == "report")
    left = cfg.demo.minutes - log.spent_minutes()  # the stage itself is not finished (or is the report)
    floor = 0.25 if name in TRAINED else 0.0
    return max(floor, left * shares[name] / waiting if waiting > 0 else left)


def stage_configs(cfg: Config, run_dir: Path, ae_ckpt: str = "", minutes: Dict[str, float] | None = None
                  ) -> Dict[str, Config]:
    """The configuration of each training stage: the same settings, each with its run folder, stage and time limit
    (`minutes`; call once the shards exist); the image encoder and the GAN build on the autoencoder checkpoint
    `ae_ckpt`."""
    shards = str(run_dir / "shards")
    replace = dataclasses.replace
    ae_ckpt = ae_ckpt or str(run_dir / "autoencoder" / "checkpoints" / "last.ckpt")

    def stage(name: str, minutes: float, val_every_epochs: int = 0, loader: dict | None = None, **sections) -> Config:
        train = replace(cfg.train, stage=name, run_dir=str(run_dir / name), max_minutes=minutes,
                        val_every_epochs=val_every_epochs or cfg.train.val_every_epochs)
        return replace(cfg, loader=replace(cfg.loader, shards=shards, stage="", **(loader or {})), train=train,
                       **sections)

    demo, minutes = cfg.demo, minutes or {}
    return {"autoencoder": stage("autoencoder", minutes.get("autoencoder", 0.0)),
            "svr": stage("svr", minutes.get("svr", 0.0), svr=replace(cfg.svr, autoencoder_ckpt=ae_ckpt)),
            "gan": stage("gan", minutes.get("gan", 0.0), val_every_epochs=demo.gan_eval_every_epochs,
                         gan=replace(
                cfg.gan, autoencoder_ckpt=ae_ckpt,
                reference_split=first_split(Path(shards), ("val", "test", "train")))),
            "vrn": stage("vrn", minutes.get("vrn", 0.0)),
            # Deep3D sees colour (as in its paper); the other image models see IM-NET's grey views
            "stereo": stage("stereo", minutes.get("stereo", 0.0), loader={"grayscale": False})}


def _train(cfg: Config, progress: bool) -> dict:
    import os

    import torch

    from recon3d.training.run import run

    # one process trains at a time here: let it use every core (`make` exports OMP_NUM_THREADS=1 for the tests)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))

    result = run(cfg, enable_progress_bar=progress)
    # the later stages use the best checkpoint by the stage's validation metric (val/iou, val/mae): with minutes of
    # training on a few shapes the last one can be a noisy dip; the GAN hands on its last (the stage table says why)
    return {"epoch": result.epoch, "step": result.global_step, "checkpoint": str(result.handed_on),
            "last_checkpoint": str(result.last_checkpoint),
            "selected_by": "last" if result.handed_on == result.last_checkpoint else result.monitor,
            "metrics": {k: v for k, v in result.metrics.items() if k.startswith("val/")}}


def _evaluate(cfg: Config, run_dir: Path, chosen: Dict[str, str]) -> dict:
    """Tables and pictures for the report: autoencoder, image-encoder, VRN, stereo and GAN metrics on the test split,
    test shapes beside their reconstructions, VRN depths and stereo pairs, GAN samples and an interpolation strip."""
    import torch

    from recon3d.inference import latent as latent_inference
    from recon3d.inference import stereo as stereo_inference
    from recon3d.inference import svr as svr_inference
    from recon3d.inference import vrn as vrn_inference
    from recon3d.inference.autoencoder import evaluate, extract_meshes
    from recon3d.inference.latent import codes_to_meshes, gan_codes, interpolate_codes, load_any
    from recon3d.inference.outputs import write_sheet, write_strip
    from recon3d.inference.splits import sheet_keys

    shards, out = run_dir / "shards", run_dir / "evaluation"
    ckpt = {name: Path(chosen[name]) for name in TRAINED}
    demo = cfg.demo
    split = first_split(shards)
    evaluate(ckpt["autoencoder"], shards, split=split, resolution=demo.eval_resolution, out_dir=out)
    svr_inference.evaluate(ckpt["svr"], shards, split=split, resolution=cfg.train.val_resolution, out_dir=out)
    keys = sheet_keys(shards, split, demo.sheet_shapes)  # the same shapes on every sheet, from every category
    rows = extract_meshes(ckpt["autoencoder"], shards, out / "meshes", split=split, keys=keys,
                          resolution=demo.eval_resolution)
    write_sheet(out / "autoencoder_sheet.png", shards, rows)
    svr_inference.write_view_sheet(ckpt["svr"], shards, split, out / "svr_sheet.png", keys, demo.eval_resolution)
    for name, inference in (("vrn", vrn_inference), ("stereo", stereo_inference)):
        inference.evaluate(ckpt[name], shards, split=split, out_dir=out)
        inference.write_view_sheet(ckpt[name], shards, split, out / f"{name}_sheet.png", keys)
    latent_inference.evaluate(ckpt["gan"], shards, split=split, draws=demo.gan_eval_draws, out_dir=out)
    autoencoder, gan = load_any(ckpt["gan"])
    seeds = list(range(8))
    samples = codes_to_meshes(autoencoder, gan_codes(gan, seeds), out / "gan", [f"gan_{s}" for s in seeds],
                              resolution=demo.eval_resolution)
    write_strip(out / "gan_samples.png", samples)
    with torch.no_grad():
        line = interpolate_codes(*gan_codes(gan, [0, 1]), demo.interpolation_steps)
    strip = codes_to_meshes(autoencoder, line, out / "interpolation",
                            [f"step_{i}" for i in range(demo.interpolation_steps)], resolution=demo.eval_resolution)
    write_strip(out / "gan_interpolation.png", strip, per_line=len(strip))
    return {"folder": str(out), "split": split}


def _latents(cfg: Config, run_dir: Path, ae_ckpt: str) -> dict:
    """Export the autoencoder's codes of every shape; W&B: autoencoder -> latents."""
    from recon3d.inference.autoencoder import export_latents
    from recon3d.training.lineage import latents_artifact, model_artifact, record_job

    folder = export_latents(ae_ckpt, run_dir / "shards")
    record_job(cfg, "export-latents", "latents", lambda: [model_artifact("autoencoder", ae_ckpt)],
               lambda: [latents_artifact(folder, ae_ckpt)], run_dir / JOBS)
    return {"folder": str(folder)}


def _evaluated(cfg: Config, run_dir: Path, chosen: Dict[str, str]) -> dict:
    """The evaluation; W&B: the shards and every stage's model -> the evaluation tables."""
    from recon3d.training.lineage import evaluation_artifact, model_artifact, record_job, shards_artifact

    info = _evaluate(cfg, run_dir, chosen)
    record_job(cfg, "evaluation", "evaluation",
               lambda: [shards_artifact(run_dir / "shards"), *(model_artifact(s, chosen[s]) for s in TRAINED)],
               lambda: [evaluation_artifact(run_dir.name, Path(info["folder"]))], run_dir / JOBS)
    return info


def _shards_stage(cfg: Config, run_dir: Path, progress: bool) -> dict:
    """Build (or finish) the shards, verify every member, write the contact sheet."""
    from recon3d.data.tools.contact_sheet import contact_sheet
    from recon3d.data.tools.verify import summarise, verify_shards
    from recon3d.data.writing.writer import build_shards

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
    for number, name in enumerate(STEPS, 1):
        if name == "report" or not log.done(name):
            minutes = stage_minutes(cfg, log, name)
            kind = "trains for" if name in TRAINED else "about"
            left = cfg.demo.minutes - log.spent_minutes()
            _say(f"[{number}/{len(STEPS)}] {name}: {kind} {minutes:.1f} min ({left:.1f} of the demo's "
                 f"{cfg.demo.minutes:g} min left)")
            stage_started = time.perf_counter()
            info = work[name](minutes)
            log.finish(name, time.perf_counter() - stage_started, budget_seconds=round(minutes * 60, 1), **info)
        else:
            _say(f"[{number}/{len(STEPS)}] {name}: done in an earlier run ({log.stages[name]['seconds']:.0f} s)")


def run_demo(cfg: Config, meshes: str = "", progress: bool = True) -> int:
    """Run (or resume) the whole method in cfg.demo.out_dir; returns a process exit code."""
    from recon3d.workflows.report import write_report

    run_dir = Path(cfg.demo.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = StageLog(run_dir / "stages.json")
    demo = cfg.demo
    source_root = Path(meshes) if meshes else run_dir / "meshes"
    cfg = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, root=str(source_root)),
                              shards=dataclasses.replace(cfg.shards, out_dir=str(run_dir / "shards"),
                                                         samples_per_shard=demo.samples_per_shard))
    atomic_write(run_dir / "config.json", json.dumps(to_dict(cfg), indent=1, sort_keys=True).encode())
    started = time.perf_counter()

    def checkpoint(stage: str) -> str:
        """The checkpoint a finished training stage handed on (its best by its validation metric; the GAN's last)."""
        return log.stages[stage]["checkpoint"]

    def trained(name: str, minutes: float) -> dict:
        ae_ckpt = checkpoint("autoencoder") if name != "autoencoder" else ""
        return _train(stage_configs(cfg, run_dir, ae_ckpt, {name: minutes})[name], progress)

    work: Dict[str, Callable[[float], dict]] = {
        "meshes": lambda _: {"source": str(source_root), "written": 0 if meshes else write_procedural_meshes(
            source_root, demo.categories, demo.shapes_per_category)},
        "shards": lambda _: _shards_stage(cfg, run_dir, progress),
        "latents": lambda _: _latents(cfg, run_dir, checkpoint("autoencoder")),
        "evaluate": lambda _: _evaluated(cfg, run_dir, {s: checkpoint(s) for s in TRAINED}),
        "report": lambda _: {"path": str(write_report(run_dir))},
        **{name: (lambda minutes, name=name: trained(name, minutes)) for name in TRAINED},
    }
    _run_stages(cfg, log, work)
    total = sum(i["seconds"] for i in log.stages.values()) / 60
    print(f"\nrun folder: {run_dir} ({time.perf_counter() - started:.0f} s this run; {total:.1f} min in all, budget "
          f"{demo.minutes:g} min)")
    print(f"report: {log.stages['report']['path']}")
    for name in (*TRAINED, JOBS):
        wandb_dir = run_dir / name / "wandb"
        if any(wandb_dir.glob("offline-run-*")):
            print(f"W&B ran offline; to upload: wandb sync {wandb_dir}/offline-run-*")
    return 0
