"""The read side of a shard folder: its manifest, its shard files per split, and a whole tar read into memory.

Every reader (the training loader, verify, contact sheets, inference) starts here; nothing here imports the mesh
preparation chain.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardInfo:
    path: str
    samples: int


def load_manifest(shard_dir: str | Path) -> dict:
    """Read manifest.json of a shard folder.

    Raises:
        FileNotFoundError: the folder has no manifest (the message says how to build one).
        ValueError: the manifest is not valid JSON.
    """
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{shard_dir}: no {MANIFEST} (build it with `recon3d shards build`)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def shard_infos(shard_dir: str | Path, split: str, manifest: dict | None = None) -> List[ShardInfo]:
    """The shard files of one split with their sample counts, in manifest order."""
    manifest = manifest or load_manifest(shard_dir)
    return [ShardInfo(str(Path(shard_dir) / f"{s['name']}.tar"), s["samples"])
            for s in manifest["shards"] if s["split"] == split]


def read_tar(path: str | Path) -> dict:
    """All samples of one shard: key -> {member suffix: bytes}, in file order (raises for a damaged file)."""
    samples: dict = {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            base = info.name.rsplit("/", 1)
            stem, _, suffix = base[-1].partition(".")
            key = f"{base[0]}/{stem}" if len(base) == 2 else stem
            samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    return samples
