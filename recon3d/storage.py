"""Object storage (`s3://`, `gs://`, `az://`, ... through fsspec): shard sets, latents and run folders in a bucket.

Readers open objects directly (`open_object`); everything that writes works in a local mirror of the bucket folder
and uploads it (`mirrored`): objects are written whole, so a reader never sees half a file, and the files that say a
folder is complete (a shard set's manifest.json, a latents index) go last. The mirror lives under the node-local
cache (`loader.cache_dir`, or RECON3D_CACHE) when one is set, and is kept there (a rerun resumes from it), or in a
temporary folder removed afterwards.

Credentials and endpoints are the storage library's own (s3fs: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_ENDPOINT_URL or ~/.aws; gcsfs: GOOGLE_APPLICATION_CREDENTIALS). Extra: `pip install 'recon3d[s3]'` (or gcsfs for
gs://)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss", "r2")
_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://")
_LIBRARY = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "adl": "adlfs", "oci": "ocifs", "oss": "ossfs", "r2": "s3fs"}
LAST = ("manifest.json", "index.json", "config.json")  # written after everything they describe


def is_object_url(location: str | Path) -> bool:
    match = _URL.match(str(location))
    return bool(match) and match.group(1) in SCHEMES


def filesystem(url: str):
    """The fsspec filesystem of `url`; ImportError naming the package to install when it is missing."""
    scheme = _URL.match(url).group(1)
    try:
        import fsspec  # noqa: PLC0415 - only object-storage users need it
        return fsspec.filesystem(scheme)
    except ImportError as err:
        raise ImportError(f"{url}: object storage needs {_LIBRARY.get(scheme, 'an fsspec backend')} "
                          f"(pip install 'recon3d[s3]' for s3://): {err}") from None


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def open_object(url: str, mode: str = "rb"):
    """A file object for one object (read whole or streamed); OSError naming it when it cannot be opened."""
    try:
        return filesystem(url).open(url, mode)
    except (FileNotFoundError, PermissionError) as err:
        raise OSError(f"{url}: {type(err).__name__} ({err})") from None


def exists(url: str) -> bool:
    return filesystem(url).exists(url)


def download(url: str, local: Path, suffixes: Sequence[str] = ()) -> int:
    """Every object under `url` (or those whose names end in `suffixes`) into `local` (same relative names),
    skipping those whose version (ETag, else size and modification time) is the one fetched before (recorded in
    the mirror's .mirror-state.json); returns how many were fetched."""
    fs = filesystem(url)
    root = url.split("://", 1)[1].rstrip("/")
    state_path = local / ".mirror-state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    fetched = 0
    for name, info in sorted(fs.find(root, detail=True).items()):
        relative = name[len(root):].lstrip("/")
        if not relative or _private(Path(relative)) or (suffixes and not relative.endswith(tuple(suffixes))):
            continue
        version = str(info.get("ETag") or info.get("etag") or info.get("md5Hash")
                      or (info.get("size"), str(info.get("LastModified") or info.get("mtime"))))
        target = local / relative
        if target.is_file() and state.get(relative) == version:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".download.tmp")
        fs.get_file(name, str(tmp))
        os.replace(tmp, target)
        state[relative] = version
        fetched += 1
    local.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state, sort_keys=True))
    return fetched


def fetched(url: str, cache_dir: str = "") -> Path:
    """A local copy of the folder at `url`, brought up to date (a small folder read whole: latents, a run folder
    to evaluate); kept under the cache (cache_dir, RECON3D_CACHE, else the system's temp folder) for the next
    reader."""
    local = mirror_folder(url, cache_dir) or Path(tempfile.gettempdir()) / f"recon3d-{os.getuid()}" / \
        f"mirror-{hashlib.sha256(url.encode()).hexdigest()[:16]}"
    local.mkdir(parents=True, exist_ok=True)
    download(url, local)
    return local


def upload(local: Path, url: str, *, only: Sequence[str] = (), sent: dict | None = None) -> int:
    """The files under `local` to the same names under `url` (temp files and locks left out), the LAST ones after
    the rest; `only` limits it to files under those relative folders; `sent` (relative name -> (size, mtime)) skips
    files unchanged since they were last sent and is updated. Returns how many were sent."""
    fs = filesystem(url)
    files = sorted(p for p in local.rglob("*") if p.is_file() and not _private(p.relative_to(local)))
    if only:
        files = [p for p in files if any(p.relative_to(local).parts[:len(Path(o).parts)] == Path(o).parts
                                         for o in only)]
    files.sort(key=lambda p: p.name in LAST)
    count = 0
    for path in files:
        relative = path.relative_to(local).as_posix()
        stamp = (path.stat().st_size, path.stat().st_mtime_ns)
        if sent is not None and sent.get(relative) == stamp:
            continue
        fs.put_file(str(path), join(url, relative))
        count += 1
        if sent is not None:
            sent[relative] = stamp
    return count


def _private(relative: Path) -> bool:
    """Files that stay on the machine: temp files, locks, the mirror's own notes."""
    name = relative.name
    return name.endswith((".tmp", ".lock")) or ".tmp" in name.split(".")[-2:] or name.startswith(".mirror")


def mirror_folder(url: str, cache_dir: str = "") -> Path | None:
    """Where the local mirror of `url` is kept: under cache_dir (or RECON3D_CACHE), named by a hash of the URL;
    None without a cache (a temporary folder is used)."""
    cache = cache_dir or os.environ.get("RECON3D_CACHE", "")
    if not cache:
        return None
    return Path(cache) / f"mirror-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def mirrored(location: str | Path, *, cache_dir: str = "", fetch: bool | Sequence[str] = True, send: bool = True,
             only: Sequence[str] = ()) -> Iterator[Path]:
    """A local folder for `location`: the folder itself when it is local; for an object URL a mirror, filled from
    the bucket first (`fetch`: what a resumed build or run needs; a list of suffixes fetches only those files) and
    sent back when the block ends, also when it raises (`send`: what was finished is kept; `only` these relative
    folders). Yields the local folder."""
    if not is_object_url(location):
        yield Path(location)
        return
    url = str(location)
    kept = mirror_folder(url, cache_dir)
    with contextlib.ExitStack() as stack:
        local = kept or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recon3d-mirror-")))
        local.mkdir(parents=True, exist_ok=True)
        if fetch:
            download(url, local, () if fetch is True else fetch)
        sent = {p.relative_to(local).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in local.rglob("*") if p.is_file()}  # what the bucket holds already
        try:
            yield local
        finally:
            if send:
                upload(local, url, only=only, sent=sent)
        if kept is None:
            shutil.rmtree(local, ignore_errors=True)
