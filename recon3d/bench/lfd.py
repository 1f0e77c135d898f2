"""`recon3d bench lfd`: the light field descriptor alone on a folder of meshes: seconds per descriptor and per
distance, and leave-one-out retrieval precision@1 per category."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from recon3d.config import Config
from recon3d.data.writing.formats import RejectError, load_mesh
from recon3d.data.writing.sources import discover
from recon3d.geometry.lfd import lfd_distance, light_field_descriptor, precision_at_1
from recon3d.geometry.transform import normalise


def bench_lfd(cfg: Config, limit: int = 0) -> str:
    """Light field descriptors of every mesh under cfg.source.root: seconds per descriptor and leave-one-out
    retrieval precision@1 per category (the nearest other shape by LFD distance has the same category)."""
    items, _, _ = discover(cfg.source)
    items = [i for i in items if i.kind == "mesh"][:limit or None]
    descriptors, categories, seconds = [], [], []
    for item in items:
        try:
            mesh = load_mesh(Path(cfg.source.root) / item.path)
        except RejectError:
            continue
        verts = normalise(mesh.vertices, mesh.faces, up=item.up, front=item.front).apply(mesh.vertices)
        start = time.perf_counter()
        descriptors.append(light_field_descriptor(verts, mesh.faces))
        seconds.append(time.perf_counter() - start)
        categories.append(item.category)
    if len(descriptors) < 2:
        raise ValueError(f"{cfg.source.root}: fewer than two readable meshes")
    start = time.perf_counter()
    count = len(descriptors)
    distances = np.zeros((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            distances[i, j] = distances[j, i] = lfd_distance(descriptors[i], descriptors[j])
    pair_seconds = (time.perf_counter() - start) / (count * (count - 1) / 2)
    lines = [f"LFD on {count} meshes: {statistics.median(seconds):.2f} s per descriptor (median), "
             f"{1000 * pair_seconds:.1f} ms per distance",
             f"{'category':<24}{'shapes':>8}{'precision@1':>14}"]
    for category, row in precision_at_1(distances, categories).items():
        lines.append(f"{category:<24}{row['shapes']:>8}{row['precision@1']:>14.3f}")
    return "\n".join(lines)
