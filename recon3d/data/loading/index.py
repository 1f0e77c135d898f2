"""Shard indexes: where each member of each sample lies in a shard's tar, so that a reader seeks to the members a
stage decodes instead of parsing every header (the tar stays a plain WebDataset tar).

`<name>.idx` beside `<name>.tar` is JSON:

    {"format": "recon3d-index/1", "tar_bytes": N, "samples": [[key, {suffix: [offset, size]}], ...]}

with samples in file order and `offset` the first byte of the member's data. The writer makes it from the finished
tar (`scan_tar`) and records its sha256 in the sidecar and manifest; `recon3d shards verify` rebuilds it from the tar
and compares; `recon3d shards upgrade` adds indexes to a shard set written before they existed.

`IndexedShard.read` checks each member's own tar header (name and size) before using its bytes, so an index that
disagrees with its tar is noticed at the sample it concerns and never decodes the wrong bytes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from recon3d.files import atomic_write

FORMAT = "recon3d-index/1"
BLOCK = 512


def index_path(tar_path: str | Path) -> Path:
    tar_path = Path(tar_path)
    return tar_path.with_name(tar_path.name[:-len(".tar")] + ".idx") if tar_path.name.endswith(".tar") else \
        tar_path.with_name(tar_path.name + ".idx")


def scan_tar(path: str | Path) -> dict:
    """The index of a tar, from its headers (raises tarfile.TarError / OSError for a damaged file)."""
    samples: List[list] = []
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            folder, _, base = info.name.rpartition("/")
            stem, _, suffix = base.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            if not samples or samples[-1][0] != key:
                samples.append([key, {}])
            samples[-1][1][suffix] = [info.offset_data, info.size]
    return {"format": FORMAT, "tar_bytes": Path(path).stat().st_size, "samples": samples}


def index_bytes(index: dict) -> bytes:
    return json.dumps(index, sort_keys=True, separators=(",", ":")).encode("utf-8")


def parse_index(data: bytes, where: str, tar_bytes: Optional[int] = None) -> dict:
    """A shard's index from its bytes; ValueError naming `where` when it is not one (truncated, edited, another
    shard's: its recorded tar size differs from `tar_bytes`)."""
    try:
        index = json.loads(data)
        ok = isinstance(index, dict) and index.get("format") == FORMAT and isinstance(index.get("samples"), list)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{where}: not a shard index (truncated or damaged)")
    if tar_bytes is not None and index.get("tar_bytes") != tar_bytes:
        raise ValueError(f"{where}: made for a {index.get('tar_bytes')}-byte tar, the shard has {tar_bytes} bytes")
    for entry in index["samples"]:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], dict)):
            raise ValueError(f"{where}: malformed sample entry {str(entry)[:80]!r}")
    return index


def load_index(tar_path: str | Path) -> Optional[dict]:
    """The index beside a tar, checked against the tar's size; None when there is none (an older shard set)."""
    path = index_path(tar_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_index(data, str(path), Path(tar_path).stat().st_size)


def _octal(field: bytes) -> int:
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else -1


class _OpenFiles:
    """The shard files this process has open for indexed reads, the least recently used closed beyond `limit`."""

    def __init__(self, limit: int = 64) -> None:
        self.limit, self.fds = limit, collections.OrderedDict()

    def get(self, path: str) -> int:
        fd = self.fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            while len(self.fds) >= self.limit:
                os.close(self.fds.popitem(last=False)[1])
        self.fds[path] = fd
        return fd


_FILES = _OpenFiles()
_CHOSEN: Dict[tuple, list] = {}  # (member filter, a sample's member names) -> the names it keeps


class IndexedShard:
    """Random access to the samples of one indexed shard (picklable: files are opened per process, on read)."""

    def __init__(self, path: str, index: dict) -> None:
        self.path, self.samples = str(path), index["samples"]

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int, wanted: Optional[Callable[[str], bool]] = None) -> "LazySample":
        """Sample `i` as the streaming reader gives it (suffix -> bytes, __key__, __url__), limited to the `wanted`
        members; each member's bytes are read when first looked up, so a decoder that picks one view of twenty
        reads one. A member whose tar header disagrees with the index raises ValueError on lookup."""
        key, members = self.samples[i]
        if wanted is not None:
            names = tuple(members)
            chosen = _CHOSEN.get((wanted, names))
            if chosen is None:
                if len(_CHOSEN) > 1024:  # filters are made per loader: keep the cache from growing
                    _CHOSEN.clear()
                chosen = _CHOSEN[wanted, names] = [suffix for suffix in names if wanted(suffix)]
            members = {suffix: members[suffix] for suffix in chosen}
        return LazySample(self, key, members)

    def member(self, name: str, offset: int, size: int) -> bytes:
        fd = _FILES.get(self.path)
        data, body = os.pread(fd, BLOCK, offset - BLOCK), os.pread(fd, size, offset)  # no copy, no zero-fill
        if len(data) != BLOCK or len(body) != size:
            raise ValueError(f"member {name}: the shard ends before the {size} bytes its index promises")
        encoded = name.encode()
        # the header's name field holds the name NUL-padded (a name of 100 bytes or more lives in a PAX header
        # before this one, the field a cut copy of it) and its size field the size in octal
        if len(encoded) < 100:
            name_ok = data.startswith(encoded) and data[len(encoded)] == 0
        else:
            name_ok = encoded.startswith(data[:100].split(b"\0", 1)[0])
        if not name_ok or _octal(data[124:136]) != size:
            stored = data[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            raise ValueError(f"member {name}: the index disagrees with the tar's header there "
                             f"({stored!r}, {_octal(data[124:136])} bytes)")
        return body


class LazySample(Mapping):
    """One sample's members (suffix -> bytes) plus __key__ and __url__, read from the shard on first lookup."""

    def __init__(self, shard: IndexedShard, key: str, members: Dict[str, list]) -> None:
        self._shard, self._members = shard, members
        self._got: Dict[str, object] = {"__key__": key, "__url__": shard.path}

    def __getitem__(self, name: str):
        got = self._got.get(name)
        if got is None:
            offset, size = self._members[name]
            got = self._got[name] = self._shard.member(f"{self._got['__key__']}.{name}", offset, size)
        return got

    def __contains__(self, name) -> bool:
        return name in self._got or name in self._members

    def __iter__(self):
        yield "__key__"
        yield "__url__"
        yield from self._members

    def __len__(self) -> int:
        return 2 + len(self._members)


def open_indexed(path: str) -> Tuple[Optional[IndexedShard], str]:
    """(shard, "") when the local tar `path` has a usable index; (None, why) when it has none or a bad one."""
    try:
        index = load_index(path)
    except (OSError, ValueError) as err:
        return None, str(err)
    if index is None:
        return None, ""
    return IndexedShard(path, index), ""


def write_index(tar_path: str | Path, dest: str | Path | None = None) -> str:
    """Index a finished tar, atomically, into `dest` (default: beside it); returns the index's sha256."""
    data = index_bytes(scan_tar(tar_path))
    atomic_write(dest or index_path(tar_path), data)
    return hashlib.sha256(data).hexdigest()
