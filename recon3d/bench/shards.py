"""`recon3d bench shards`: bytes per sample of a shard set, by member, with the tar format's own overhead."""

from __future__ import annotations

import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Dict

from recon3d.data.loading.shards import load_manifest


def bench_shards(shard_dir: str) -> str:
    """Bytes per sample, by member kind, with the tar format's own overhead."""
    manifest = load_manifest(shard_dir)
    sizes: Dict[str, int] = defaultdict(int)
    total_bytes, samples = 0, 0
    for shard in manifest["shards"]:
        path = Path(shard_dir) / f"{shard['name']}.tar"
        total_bytes += path.stat().st_size
        samples += shard["samples"]
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                suffix = info.name.rsplit("/", 1)[-1].partition(".")[2]
                kind = suffix.split("_")[0].split(".")[0] if suffix.startswith(("view_", "camera_")) else suffix
                sizes[kind] += info.size
    if not samples:
        raise ValueError(f"{shard_dir}: no samples")
    lines = [f"shard sizes: {samples} samples in {len(manifest['shards'])} shards, "
             f"{total_bytes / samples / 1024:.1f} KiB per sample"]
    for kind, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:<16} {size / samples / 1024:8.1f} KiB/sample")
    lines.append(f"  {'tar headers':<16} {(total_bytes - sum(sizes.values())) / samples / 1024:8.1f} KiB/sample")
    return "\n".join(lines)
