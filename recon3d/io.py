"""Files: writing so that a reader never sees half of one (a temp name in the same folder, then a rename), checksums,
and the layout of a training run folder (which checkpoint a run hands on)."""

from __future__ import annotations

import hashlib
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional


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
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_run_folder(path: str | Path) -> bool:
    """A training run's folder (train.run_dir): it holds checkpoints/."""
    return (Path(path) / "checkpoints").is_dir()


def pick_handed_on(hands_on: str, best: Optional[Path], last: Optional[Path]) -> Optional[Path]:
    """The checkpoint a run hands on, from its best and last (None where absent): the best, else the last; the last,
    else the best, for a stage that hands on its last (the stage table's `hands_on`)."""
    return (last or best) if hands_on == "last" else (best or last)


def run_checkpoint(run_dir: str | Path) -> Path:
    """What a finished run hands on (pick_handed_on): its best checkpoint by the stage's validation metric (the newest
    best-*) or its last.ckpt, as its stage's `hands_on` says (the stage read from the run's config.json). So
    `--ckpt runs/ae` and `svr.autoencoder_ckpt=runs/ae` name a run, not a file."""
    folder = Path(run_dir) / "checkpoints"
    best = max((p for p in folder.glob("best-*.ckpt") if not p.name.endswith(".fp32.ckpt")),
               key=lambda p: p.stat().st_mtime_ns, default=None)
    last = folder / "last.ckpt" if (folder / "last.ckpt").exists() else None
    chosen = pick_handed_on(_hands_on(Path(run_dir)) if best and last else "best", best, last)
    if chosen is None:
        raise FileNotFoundError(f"{run_dir}: a run folder without a checkpoint (nothing in {folder})")
    return chosen


def _hands_on(run_dir: Path) -> str:
    """The stage table's `hands_on` for the stage a run folder trained ("best" when its config cannot tell)."""
    import json

    from recon3d.stages import STAGES

    try:
        stage = json.loads((run_dir / "config.json").read_text())["train"]["stage"]
    except (OSError, ValueError, KeyError, TypeError):
        return "best"
    return STAGES[stage].hands_on if stage in STAGES else "best"


def run_name(ckpt: str | Path) -> str:
    """The name of the run a checkpoint (or run folder) belongs to: <run>/checkpoints/x.ckpt -> <run>."""
    path = Path(ckpt).resolve()
    return path.name if is_run_folder(path) else path.parent.parent.name


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (x86 avx512_bf16 or AMX, Arm bf16): there oneDNN's bf16
    matmuls run 3-4x faster than fp32; elsewhere bf16 is emulated and no faster."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            flags = set(" ".join(line for line in f if line.lower().startswith(("flags", "features"))).split())
    except OSError:  # not Linux: macOS on Apple silicon has bf16, but torch's CPU kernels there gain little
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"}) or (platform.machine() == "aarch64" and "bf16" in flags)


def native_bf16(device_type: str) -> bool:
    """Whether a device of this type ("cuda" or "cpu") computes bf16 natively here: a CUDA GPU that supports it
    (Ampere and later), a CPU per native_bf16_cpu. Where it is emulated, bf16 is no faster than fp32 (or far slower)."""
    if device_type == "cuda":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and native_bf16_cpu()
