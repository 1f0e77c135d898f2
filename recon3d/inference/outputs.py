"""Files for people: meshes, and picture sheets that put an input beside what a model made of it. Each is written
through a temp name, so a reader never sees half a file."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import trimesh
from PIL import Image, ImageDraw

from recon3d.files import atomic_path
from recon3d.geometry.render import render_preview
from recon3d.inference.splits import input_views


def save_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write a mesh (format from the suffix: obj, ply, glb)."""
    with atomic_path(path, keep_suffix=True) as tmp:
        trimesh.Trimesh(vertices, faces, process=False).export(tmp)
    return path


def save_png(path: Path, image: np.ndarray) -> Path:
    """Write an (H, W[, 3]) uint8 image as PNG."""
    with atomic_path(path, keep_suffix=True) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def _labelled(image: np.ndarray, label: str) -> np.ndarray:
    picture = Image.fromarray(image)
    ImageDraw.Draw(picture).text((2, 2), label, fill="black")
    return np.asarray(picture)


def write_pairs(path: Path, rows: List[dict], lefts: Dict[str, np.ndarray], size: int = 128,
                label: str = "") -> Path:
    """One line per row that has a mesh: lefts[row["name"]] (the input, white when missing) beside a render of
    row["mesh"] = (vertices, faces); lines labelled with row[label] when `label` names a field.

    Raises:
        ValueError: no row has a mesh.
    """
    lines = []
    for row in rows:
        if "mesh" not in row:
            continue
        left = lefts.get(row["name"], np.full((size, size, 3), 255, np.uint8))
        line = np.concatenate([_resized(left, size), render_preview(*row["mesh"], size)], axis=1)
        lines.append(_labelled(line, row[label]) if label else line)
    if not lines:
        raise ValueError("no mesh to show")
    return save_png(path, np.concatenate(lines, axis=0))


def write_sheet(path: Path, shard_dir: str | Path, rows: List[dict], size: int = 128) -> Path:
    """One line per mesh: the shape's first stored view beside a render of its mesh (rows have key and mesh)."""
    views = input_views(shard_dir, [r["key"] for r in rows])
    return write_pairs(path, [{**r, "name": r["key"]} for r in rows], views, size, label="key")


def write_strip(path: Path, rows: List[dict], size: int = 128, per_line: int = 8) -> Path:
    """Renders of the rows' meshes side by side (per_line to a line), each labelled with its name, as one PNG."""
    tiles = [_labelled(render_preview(*row["mesh"], size), row["name"]) for row in rows]
    blank = np.full_like(tiles[0], 255)
    lines = []
    for start in range(0, len(tiles), per_line):
        line = tiles[start:start + per_line]
        line += [blank] * (min(per_line, len(tiles)) - len(line))
        lines.append(np.concatenate(line, axis=1))
    return save_png(path, np.concatenate(lines, axis=0))
