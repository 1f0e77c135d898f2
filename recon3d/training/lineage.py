"""W&B artifacts linking each step of the method to what it read and what it made: shards (dataset) -> autoencoder
(model) -> latents -> image encoder and latent GAN (models); VRN and stereo (models) from the shards; and the
evaluation (tables) from the models.

A training run whose W&B logger is on records its inputs (the shard manifest; for svr and gan the autoencoder
checkpoint and its exported latents) and its output (the checkpoint it hands on: the best by the stage's metric,
else the last). `record_job` does the same for a step that does not train (exporting latents, evaluating) in a short
W&B run of its own. An artifact is named by what it is and where it came from (`autoencoder-<run folder>`,
`latents-<autoencoder run folder>`, `shards-<manifest digest>`), so that a later run using the same files links to
the version an earlier run logged (W&B matches versions by content).

Online, inputs are `use_artifact` edges and W&B draws the lineage graph. Offline, W&B cannot record a use (it
refuses use_artifact without a server): each output artifact then names its inputs in its metadata ("inputs") and
the run's summary lists them, so the chain is still in the synced runs, though not as graph edges.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence

from recon3d.config import Config, to_dict
from recon3d.data.loading.latents import default_latents
from recon3d.data.loading.shards import load_manifest
from recon3d.runs import run_folder
from recon3d.stages import STAGES, latents_exporter
from recon3d.tasks.checkpoints import checkpoint_file


def _name(*parts: str) -> str:
    """An artifact name W&B accepts (letters, digits, - _ .)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(p for p in parts if p))[:120]


def _artifact(name: str, kind: str, files: Iterable[Path], metadata: Optional[dict] = None):
    import wandb  # noqa: PLC0415 - W&B only when used (1 s import)

    artifact = wandb.Artifact(name, type=kind, metadata=metadata or {})
    for path in files:
        artifact.add_file(str(path), name=path.name)
    return artifact


def _run_label(run_dir: Path, stage: str) -> str:
    """A run folder's name in artifact names; one named like its stage (the demo's runs/demo/autoencoder) by the
    folder above it."""
    return run_dir.name if run_dir.name != stage else run_dir.parent.name


def shards_artifact(shards: str | Path):
    """The shard set as a dataset artifact: its manifest (names, counts, sizes and sha256 of every shard) by
    reference to its content, not the tars themselves."""
    manifest_path = Path(shards) / "manifest.json"
    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()[:12]
    manifest = load_manifest(shards)
    return _artifact(_name("shards", digest), "dataset", [manifest_path],
                     {"folder": str(shards), "samples": manifest.get("samples"),
                      "splits": {k: v.get("samples") for k, v in manifest.get("splits", {}).items()}})


def model_artifact(stage: str, checkpoint: str | Path, metadata: Optional[dict] = None):
    """A checkpoint file (a ZeRO folder's consolidated file) as a model artifact named by stage and run folder."""
    path = Path(checkpoint_file(checkpoint))
    run_dir = run_folder(path)
    return _artifact(_name(stage, _run_label(run_dir, stage)), "model", [path],
                     {"stage": stage, "file": path.name, "run_dir": str(run_dir), **(metadata or {})})


def latents_artifact(folder: str | Path, autoencoder_ckpt: str | Path):
    """Exported latents (every split's codes, keys and latents.json) named after the autoencoder's run folder."""
    folder = Path(folder)
    run_dir = run_folder(autoencoder_ckpt)  # a checkpoint file or its run folder (svr.autoencoder_ckpt=runs/ae)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return _artifact(_name("latents", _run_label(run_dir, latents_exporter())), "latents", files,
                     {"folder": str(folder), "autoencoder_checkpoint": str(autoencoder_ckpt)})


def link(run: Any, inputs: Sequence, outputs: Sequence) -> List[str]:
    """Record `inputs` as used and `outputs` as made by `run` (online: use_artifact edges; offline: the inputs'
    names in each output's metadata and in the run's summary). Returns the inputs' names."""
    names = [a.name for a in inputs]
    if not run.offline:
        for artifact in inputs:
            run.use_artifact(artifact)
    run.summary["lineage/inputs"] = names
    for artifact in outputs:
        artifact.metadata["inputs"] = names
        run.log_artifact(artifact)
    return names


def training_inputs(cfg: Config) -> list:
    """What a training stage reads: the shards, and for svr and gan the autoencoder and its exported latents."""
    if "://" in str(cfg.loader.shards) or str(cfg.loader.shards).startswith("pipe:"):
        return []  # a remote shard set: its manifest is not a local file to hash
    inputs = [shards_artifact(cfg.loader.shards)]
    learns_from = STAGES[cfg.train.stage].learns_from
    section = getattr(cfg, learns_from) if learns_from else None
    if section is not None and section.autoencoder_ckpt:
        inputs.append(model_artifact(latents_exporter(), section.autoencoder_ckpt))
        folder = Path(default_latents(cfg.loader.shards, section.autoencoder_ckpt, section.latents))
        if folder.is_dir():
            inputs.append(latents_artifact(folder, section.autoencoder_ckpt))
    return inputs


def record_training(cfg: Config, run: Any, checkpoint: Optional[Path], metrics: dict) -> None:
    """Link a finished training run (rank 0, W&B on) to its inputs and its handed-on checkpoint."""
    outputs = []
    if checkpoint is not None:
        values = {k: v for k, v in metrics.items() if k.startswith("val/") and k.count("/") == 1}
        outputs.append(model_artifact(cfg.train.stage, checkpoint, {"metrics": values}))
    link(run, training_inputs(cfg), outputs)


def record_job(cfg: Config, job_type: str, name: str, inputs: Callable[[], Sequence],
               outputs: Callable[[], Sequence], folder: Path) -> None:
    """A short W&B run (job_type e.g. "export-latents", "evaluation"; its files under `folder`) that links the
    artifacts `inputs()` to `outputs()`; nothing, not even the artifacts (their files are hashed), when the config
    has W&B off."""
    train = cfg.train
    if train.logger != "wandb" or train.wandb_mode == "disabled":
        return
    import wandb  # noqa: PLC0415 - W&B only when used (1 s import)

    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=train.wandb_project, name=name, job_type=job_type, group=train.wandb_group or None,
                     dir=str(folder), mode=train.wandb_mode, config=to_dict(cfg))
    try:
        link(run, inputs(), outputs())
    finally:
        run.finish()


def evaluation_artifact(name: str, folder: Path):
    """The evaluation tables (eval_*.json / .csv) of `folder` as one artifact."""
    files = sorted(p for p in folder.glob("eval_*") if p.suffix in (".json", ".csv"))
    return _artifact(_name("evaluation", name), "evaluation", files, {"folder": str(folder)})
