"""Shard sets that are not a local folder: a URL base (`https://host/shards`, any scheme webdataset's gopen opens:
http(s) and sftp through curl, hf, ais, ...; object storage such as `s3://bucket/shards` through fsspec) or a
`pipe:` command with `{file}` where the file name goes (`pipe:aws s3 cp s3://bucket/shards/{file} -`); and the
optional node-local cache (`loader.cache_dir`).

The manifest is read from the same place as the shards (`<base>/manifest.json`). Without a cache, training streams
the shards from there (no index, no size check: a shard that cannot be opened is skipped with a warning naming it).
With a cache, each shard of a split and its index are copied into `<cache_dir>/<location hash>/` on first use,
under a lock (the ranks of a node share one copy), through a temp name, and kept only when size and sha256 match
the manifest (a shard that changed while it was read is named and skipped); then it is read as a local indexed
shard. A local folder on a shared file system can be cached the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls

from recon3d.data.loading.index import index_path
from recon3d.files import atomic_path, atomic_write
from recon3d.storage import is_object_url, open_object

log = logging.getLogger("recon3d.data")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


_TAR = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*)\.tar(?=[\s'\"]|$)")


def split_shard_list(location: str) -> Tuple[str, Optional[List[str]]]:
    """A shard list written as webdataset writes one (`/data/s/train-{000000..000009}.tar`, `https://host/s/
    train-{000000..000009}.tar`, `pipe:curl -s https://host/s/train-{000000..000009}.tar`; `::` joins lists):
    (where the set lives, the shard names listed); (location, None) for a plain location. The manifest is read
    from the same place, the same way."""
    text = str(location)
    if "{file}" in text or not (text.endswith(".tar") or "::" in text or re.search(r"\.tar[\s'\"]", text)):
        return text, None
    urls = expand_urls(text)
    names, bases = [], set()
    for url in urls:
        found = list(_TAR.finditer(url))
        if not found:
            raise ValueError(f"loader.shards: {url!r} names no .tar shard")
        tar = found[-1]
        if url.startswith("pipe:"):  # the command, with {file} where the shard's file name was
            bases.add(url[:tar.start()] + "{file}" + url[tar.end():])
        elif tar.start() and url[tar.start() - 1] != "/":
            raise ValueError(f"loader.shards: {url!r}: shard file names must be whole (split-NNNNNN.tar)")
        else:
            bases.add(url[:tar.start()])
        names.append(tar.group(1))
    if len(bases) != 1:
        raise ValueError(f"loader.shards: the listed shards must come from one place, got {sorted(bases)}")
    base = bases.pop()
    return (base if base.startswith("pipe:") else base.rstrip("/") or "."), names


def is_remote(location: str | Path) -> bool:
    text = str(location)
    return text.startswith("pipe:") or (bool(_SCHEME.match(text)) and not text.startswith("file://"))


def file_url(location: str | Path, name: str) -> str:
    """Where the file `name` of a shard set lives (a local path for folders and file:// URLs)."""
    text = str(location)
    if text.startswith("pipe:"):
        if "{file}" not in text:
            raise ValueError(f"loader.shards={text!r}: a pipe: location needs {{file}} where the file name goes")
        return text.replace("{file}", name)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if is_remote(text):
        return text.rstrip("/") + "/" + name
    return str(Path(text) / name)


def open_url(url: str):
    """A binary stream of a file of a shard set (local file, URL or pipe), as webdataset opens shards; object
    storage (s3://, gs://, ...) through fsspec (recon3d.storage)."""
    if not is_remote(url):
        return open(url, "rb")
    if is_object_url(url):
        try:
            return open_object(url)
        except ImportError:
            if not url.startswith("gs://"):
                raise
    return gopen(url, "rb")  # gs:// without gcsfs: webdataset's gsutil


def read_file(location: str | Path, name: str) -> bytes:
    url = file_url(location, name)
    try:
        with open_url(url) as stream:
            data = stream.read()
    except Exception as err:  # curl, a pipe's command or the server failed: one line naming the file
        raise OSError(f"{url}: cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
    if not data:
        raise OSError(f"{url}: empty (not found, or the command printed nothing)")
    return data


def cache_folder(cache_dir: str | Path, location: str | Path) -> Path:
    """The cache's folder for one shard set: named by a hash of where it comes from."""
    key = str(location) if is_remote(location) else str(Path(location).resolve())
    return Path(cache_dir) / f"shards-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another rank of this node copies the same shard
        yield
    finally:
        os.close(fd)


def cached_shard(location: str | Path, cache: Path, shard: dict) -> Optional[Path]:
    """The local copy of a shard (tar and index), copied on first use; None (with a warning) when it cannot be read
    or its bytes do not match the manifest."""
    cache.mkdir(parents=True, exist_ok=True)
    name = f"{shard['name']}.tar"
    local = cache / name
    with _locked(cache / f".{shard['name']}.lock"):
        if local.is_file() and local.stat().st_size == shard.get("bytes", local.stat().st_size):
            return local
        try:
            with atomic_path(local) as tmp:  # kept only when the whole block passes
                digest = hashlib.sha256()
                with open_url(file_url(location, name)) as src, open(tmp, "wb") as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        dst.write(block)
                size = tmp.stat().st_size
                if "bytes" in shard and size != shard["bytes"]:
                    raise OSError(f"{size} bytes arrived, the manifest says {shard['bytes']}")
                if "sha256" in shard and digest.hexdigest() != shard["sha256"]:
                    raise OSError("its sha256 differs from the manifest (changed while it was read?)")
                if shard.get("index_sha256"):
                    index = read_file(location, f"{shard['name']}.idx")
                    if hashlib.sha256(index).hexdigest() == shard["index_sha256"]:
                        atomic_write(index_path(local), index)
            return local
        except Exception as err:
            log.warning("%s: not cached (%s); skipping it (%d samples)", file_url(location, name),
                        str(err).splitlines()[0] if str(err) else type(err).__name__, shard["samples"])
            return None

