"""A run folder in object storage (`train.run_dir=s3://bucket/runs/ae`): the run trains in a local mirror of it
(filled from the bucket first, so a preempted run resumes from its last checkpoint wherever it restarts) and every
file it writes is sent to the bucket after each validation, at the end, and when it stops on an error or a signal.
The mirror is kept under `loader.cache_dir` (or RECON3D_CACHE) when one is set, else it is a temporary folder.

One process per run folder in a bucket: ranks on several nodes would each hold a mirror of their own (train
multi-GPU runs in a shared folder, or on one node with a cache folder they share)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional

import lightning as L

from recon3d.config import Config
from recon3d.errors import ConfigError
from recon3d.storage import join, mirrored, upload


class SendToBucket(L.Callback):
    """After each validation and at the end of training, what changed in the mirror goes to the bucket (rank 0)."""

    def __init__(self, local: Path, url: str) -> None:
        self.local, self.url, self.sent = local, url, {}

    def _send(self, trainer) -> None:
        if trainer.is_global_zero:
            upload(self.local, self.url, sent=self.sent)

    def on_validation_end(self, trainer, pl_module) -> None:  # the checkpoint of the validation before is on disk
        self._send(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._send(trainer)


def run_in_bucket(cfg: Config, train: Callable, **kwargs):
    """Train `cfg` (whose train.run_dir is an object URL) through `train` (training.run.run) in a local mirror;
    returns its RunResult with `location` set to the URL."""
    url = cfg.train.run_dir
    nodes, devices = cfg.train.num_nodes, cfg.train.devices
    if nodes > 1 or (isinstance(devices, int) and devices > 1 and not cfg.loader.cache_dir):
        raise ConfigError(f"train.run_dir={url}: a run folder in a bucket trains in one process, or on one node "
                          "with loader.cache_dir set; train multi-node runs in a shared folder")
    with mirrored(url, cache_dir=cfg.loader.cache_dir) as local:
        local_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=str(local)))
        sender = SendToBucket(local, url)
        try:
            result = train(local_cfg, extra_callbacks=[*kwargs.pop("extra_callbacks", ()), sender], **kwargs)
        finally:
            _record_location(local / "config.json", url)
    return dataclasses.replace(result, location=url)


def _record_location(config: Path, url: str) -> None:
    """config.json says where the run folder lives (the bucket), not where its mirror was."""
    if config.is_file():
        saved = json.loads(config.read_text())
        saved.setdefault("train", {})["run_dir"] = url
        config.write_text(json.dumps(saved, indent=1, sort_keys=True))


def bucket_path(result, path: Optional[Path]) -> str:
    """A file of a run that trained in a bucket, named by its URL (the mirror may be gone)."""
    if path is None or not getattr(result, "location", ""):
        return str(path) if path is not None else "None"
    return join(result.location, Path(path).relative_to(result.run_dir).as_posix())
