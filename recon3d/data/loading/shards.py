"""The read side of a shard folder: its manifest, its shard files per split, and a whole tar read into memory.

Every reader (the training loader, verify, contact sheets, inference) starts here; nothing here imports the mesh
preparation chain.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from recon3d.data.loading import remote
from recon3d.data.loading.index import load_index
from recon3d.data.loading.remote import file_url, is_remote, read_file
from recon3d.files import file_sha256

MANIFEST = "manifest.json"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a file name inside the folder: no /, no .., not absolute


@dataclass(frozen=True)
class ShardInfo:
    path: str
    samples: int


def load_manifest(shard_dir: str | Path) -> dict:
    """Read manifest.json of a shard folder (or of a remote location: recon3d.data.loading.remote).

    Raises:
        FileNotFoundError: the folder has no manifest (the message says how to build one).
        ValueError: the manifest is not valid JSON, or a shard entry is malformed or names a file outside the
            folder (an edited or hostile manifest: `../x`, an absolute path), naming the entry.
    """
    path = file_url(shard_dir, MANIFEST)
    if is_remote(shard_dir):
        text = read_file(shard_dir, MANIFEST)
    elif not Path(path).is_file():
        raise FileNotFoundError(f"{shard_dir}: no {MANIFEST} (build it with `recon3d shards build`)")
    else:
        text = Path(path).read_bytes()
    try:
        manifest = json.loads(text)
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


def first_split(manifest: dict, order: Sequence[str]) -> str:
    """The first split of `order` that holds samples in a manifest ("" when none does): small shard sets may leave
    val or test empty."""
    splits = manifest["splits"]
    return next((split for split in order if splits.get(split, {}).get("samples", 0)), "")


def sidecar_path(shard_dir: str | Path, name: str) -> Path:
    """The JSON the writer leaves beside each shard (count, sha256, rejects, plan hash)."""
    return Path(shard_dir) / f"{name}.json"


def shard_infos(shard_dir: str | Path, split: str, manifest: dict | None = None, *, check: bool = True,
                checksum: bool = False, checked: Optional[set] = None, cache_dir: str = "",
                only: Optional[Sequence[str]] = None) -> List[ShardInfo]:
    """The shard files of one split with their sample counts, in manifest order. With `check`, a shard that is
    missing, not the size the manifest says (truncated, rewritten, another build's), or whose manifest count
    disagrees with its sidecar (an edited manifest would weight it wrongly) is left out with a warning naming it, so
    an epoch's length and the shards' weights count only what is there; with `checksum` its sha256 is compared too.
    The size is looked at every call; the rest once per file state (path, size, mtime) not yet in `checked`, which
    collects the shards that passed (`recon3d shards verify` checks contents as well).

    A remote location is streamed from where it is (no checks); with `cache_dir` any location is first copied into
    the node-local cache, shard by shard, and read from there (recon3d.data.loading.remote). `only` (a shard list given
    as `split-{000000..000009}.tar`) keeps the listed shards of each split it names; other splits keep all theirs."""
    manifest = manifest or load_manifest(shard_dir)
    wanted = [shard for shard in manifest["shards"] if shard["split"] == split]
    if only and any(shard["name"] in only for shard in wanted):
        wanted = [shard for shard in wanted if shard["name"] in only]
    if remote.is_remote(shard_dir) and not cache_dir:
        return [ShardInfo(remote.file_url(shard_dir, f"{s['name']}.tar"), s["samples"]) for s in wanted]
    folder = remote.cache_folder(cache_dir, shard_dir) if cache_dir else Path(shard_dir)
    infos = []
    for shard in wanted:
        if cache_dir and remote.cached_shard(shard_dir, folder, shard) is None:
            continue
        path = folder / f"{shard['name']}.tar"
        stat = path.stat() if check and path.is_file() else None
        state = (str(path), stat.st_size, stat.st_mtime_ns) if stat else None
        found = ""
        if check and stat is None:
            found = "missing"
        elif check and "bytes" in shard and stat.st_size != shard["bytes"]:
            found = f"{stat.st_size} bytes, the manifest says {shard['bytes']}"
        elif check and (checked is None or state not in checked):
            found = _content_problem(folder, shard, path, checksum)
            if not found and checked is not None:
                checked.add(state)
        if found:
            logging.getLogger("recon3d.data").warning(
                f"{path}: {found}; skipping it ({shard['samples']} samples). Rebuild: recon3d shards build "
                "(finished shards are kept)")
            continue
        infos.append(ShardInfo(str(path), shard["samples"]))
    return infos


def _content_problem(shard_dir: Path, shard: dict, path: Path, checksum: bool) -> str:
    """Why a shard of the right size does not match its manifest entry ("" when it does)."""
    try:
        recorded = int(json.loads(sidecar_path(shard_dir, shard["name"]).read_text())["samples"])
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None  # no sidecar to compare with (an older shard set)
    if recorded is not None and recorded != shard["samples"]:
        return f"the manifest says {shard['samples']} samples, the shard's own record {recorded}"
    if checksum and file_sha256(path) != shard.get("sha256"):
        return "sha256 differs from the manifest (damaged or rewritten)"
    return ""


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


def shard_keys(path: str | Path) -> List[str]:
    """The sample keys of one shard in file order, from its index (the tar itself for a shard without one; raises for
    a damaged file)."""
    index = load_index(path)
    return [key for key, _ in index["samples"]] if index is not None else list(read_tar(path))


def unmet_needs(manifest: dict, pipeline: str, *, holdout_views: int = 0, point_resolution: int = 0) -> str:
    """Why shards described by `manifest` cannot feed a loader pipeline ("" when they can): stereo pairs need
    right-eye views, image pipelines views beyond the held-out ones, the autoencoder its point set (0: any)."""
    stored = manifest["config"]["geometry"]["point_resolutions"]
    views = int(manifest["config"]["render"]["views"])
    if pipeline == "stereo" and not manifest["config"]["render"].get("stereo_baseline"):
        return ("loader.stage=stereo needs right-eye views; these shards were built with render.stereo_baseline=0 "
                "(rebuild with e.g. render.stereo_baseline=0.1)")
    if pipeline != "autoencoder" and views <= holdout_views:
        return (f"loader.holdout_views={holdout_views} but the shards hold {views} views per shape; none would be "
                f"left to train on")
    if pipeline == "autoencoder" and manifest["source"]["kind"] != "imnet_hdf5" and point_resolution and \
            point_resolution not in stored:
        return f"no point set at {point_resolution}^3 (stored: {stored})"
    return ""
