"""The read side of a shard folder: its manifest, its shard files per split, and a whole tar read into memory.

Every reader (the training loader, verify, contact sheets, inference) starts here; nothing here imports the mesh
preparation chain.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

MANIFEST = "manifest.json"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a file name inside the folder: no /, no .., not absolute


@dataclass(frozen=True)
class ShardInfo:
    path: str
    samples: int


def load_manifest(shard_dir: str | Path) -> dict:
    """Read manifest.json of a shard folder.

    Raises:
        FileNotFoundError: the folder has no manifest (the message says how to build one).
        ValueError: the manifest is not valid JSON, or a shard entry is malformed or names a file outside the
            folder (an edited or hostile manifest: `../x`, an absolute path), naming the entry.
    """
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{shard_dir}: no {MANIFEST} (build it with `recon3d shards build`)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ValueError(f"{path}: not a shard manifest (no list of shards)")
    for i, shard in enumerate(manifest["shards"]):
        name = shard.get("name") if isinstance(shard, dict) else None
        if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
            raise ValueError(f"{path}: shards[{i}] name {name!r} is not a file name inside {shard_dir}; refused")
        if not isinstance(shard.get("samples"), int) or shard["samples"] < 0 or not isinstance(shard.get("split"), str):
            raise ValueError(f"{path}: shards[{i}] ({name}) needs a split and a non-negative sample count")
    return manifest


def shard_infos(shard_dir: str | Path, split: str, manifest: dict | None = None, *, check: bool = True,
                checksummed: Optional[set] = None) -> List[ShardInfo]:
    """The shard files of one split with their sample counts, in manifest order. With `check`, a shard that is
    missing or not the size the manifest says (truncated, rewritten, another build's) is left out with a warning
    naming it, so an epoch's length and the shards' weights count only what is there; with a `checksummed` set, its
    sha256 is compared too, once per (file, size, mtime) the set has not seen (`recon3d shards verify` checks
    contents as well)."""
    import logging

    from recon3d.io import file_sha256

    manifest = manifest or load_manifest(shard_dir)
    infos = []
    for shard in manifest["shards"]:
        if shard["split"] != split:
            continue
        path = Path(shard_dir) / f"{shard['name']}.tar"
        if not check:
            infos.append(ShardInfo(str(path), shard["samples"]))
            continue
        stat = path.stat() if path.is_file() else None
        size = stat.st_size if stat else None
        found = ""
        if size is None or ("bytes" in shard and size != shard["bytes"]):
            found = "missing" if size is None else f"{size} bytes, the manifest says {shard['bytes']}"
        elif _sidecar_count(path) not in (None, shard["samples"]):  # an edited manifest: its weight would be wrong
            found = f"the manifest says {shard['samples']} samples, the shard's own record {_sidecar_count(path)}"
        elif checksummed is not None and (str(path), size, stat.st_mtime_ns) not in checksummed:
            if file_sha256(path) != shard.get("sha256"):
                found = "sha256 differs from the manifest (damaged or rewritten)"
            else:
                checksummed.add((str(path), size, stat.st_mtime_ns))
        if found:
            logging.getLogger("recon3d.data").warning(
                f"{path}: {found}; skipping it ({shard['samples']} samples). Rebuild: recon3d shards build "
                "(finished shards are kept)")
            continue
        infos.append(ShardInfo(str(path), shard["samples"]))
    return infos


def _sidecar_count(tar: Path) -> Optional[int]:
    """The sample count in the JSON the writer leaves beside each shard (None when there is none to compare)."""
    try:
        return int(json.loads(tar.with_suffix(".json").read_text())["samples"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
