"""Files: writing so that a reader never sees half of one (a temp name in the same folder, then a rename), folders
one process owns at a time (an advisory lock), and checksums."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """A temp path beside `path` to write to; renamed onto `path` when the block ends without an error, removed when
    it raises. The temp name is `<name>.<host>.<pid>.tmp` (cleanup code looks for the .tmp ending), or with
    keep_suffix `<stem>.<host>.<pid>.tmp<suffix>` for writers that choose a format by the suffix (trimesh, PIL,
    ffmpeg); host and process id keep two processes (ranks on two nodes of a shared file system too) writing the
    same file from sharing a temp file.

    Example: `with atomic_path(out / "mesh.obj", keep_suffix=True) as tmp: mesh.export(tmp)`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{_host()}.{os.getpid()}"
    tmp = path.with_name(f"{path.stem}.{me}.tmp{path.suffix}" if keep_suffix else f"{path.name}.{me}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def exclusive_lock(path: str | Path, refusal: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on `path` for the block; the lock file says who holds it. When another
    process holds it, raise ValueError(refusal.format(holder=...)) at once. The lock goes with the process (a kill
    -9 frees it), and the file stays (an empty file, rewritten by the next holder)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ValueError(refusal.format(holder=holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()} since {time.ctime()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _host() -> str:
    return socket.gethostname().split(".")[0]


def temp_writer_gone(path: str | Path) -> bool:
    """Whether the process that named the temp file `<name>.<host>.<pid>.tmp` (atomic_path) ran on this host and has
    ended: its file can go at once. Another host's, or a pid that is running (perhaps reused), is not known gone."""
    parts = Path(path).name.split(".")
    if len(parts) < 4 or parts[-1] != "tmp" or not parts[-2].isdigit() or parts[-3] != _host():
        return False
    try:
        os.kill(int(parts[-2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        pass
    return False


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` atomically (see atomic_path), flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a regular file, read in 1 MiB blocks.

    Raises:
        ValueError: not a regular file (a device such as /dev/zero, a pipe or a folder would never end or mean
            nothing); FileNotFoundError: nothing there.
    """
    if not Path(path).is_file():
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file")
        raise ValueError(f"{path}: not a regular file, nothing to checksum")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
