"""Reading meshes and voxel files, with a one-line reason for everything we refuse.

trimesh reads obj/ply/stl/glb/gltf (scenes are flattened with their node transforms). OFF and binvox have readers of
our own: ModelNet's OFF files often glue the counts to the "OFF" keyword and use polygons of any size, and trimesh's
binvox loader takes the voxel edge as scale/(dim-1) where the format means scale/dim.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

MESH_EXTENSIONS = (".obj", ".off", ".ply", ".stl", ".glb", ".gltf")


class RejectError(Exception):
    """An input that cannot become a sample; str(err) is the one-line reason."""


@dataclass
class Mesh:
    vertices: np.ndarray  # (N, 3) float64
    faces: np.ndarray  # (M, 3) int64


def check_file(path: Path, max_bytes: float) -> int:
    """Size of a readable, non-empty regular file no larger than `max_bytes`, else RejectError."""
    if path.is_symlink() and not path.exists():
        raise RejectError(f"broken symlink -> {os.readlink(path)}")
    if not path.exists():
        raise RejectError("file not found")
    if not path.is_file():
        raise RejectError("not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise RejectError("empty file")
    if size > max_bytes:
        raise RejectError(f"file too large: {size / 2**20:.0f} MiB > limit {max_bytes / 2**20:.0f} MiB")
    if not os.access(path, os.R_OK):
        raise RejectError("permission denied: file is not readable")
    return size


def _triangulate(polygons: list) -> np.ndarray:
    tris = [(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)]
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def read_off(path: Path) -> Mesh:
    """Read an OFF file: tolerant of comments, a count line glued to "OFF", colour columns and n-gons (fanned)."""
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as err:
        raise RejectError(f"cannot read: {err.strerror or err}") from None
    tokens = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            tokens.append(line)
    if not tokens or not tokens[0].upper().lstrip("CNST4").startswith("OFF"):
        raise RejectError("not an OFF file: missing OFF header")
    head = tokens[0].upper()
    rest = head[head.index("OFF") + 3:].split()
    lines = tokens[1:]
    try:
        counts = rest if rest else lines.pop(0).split()
        n_vert, n_face = int(counts[0]), int(counts[1])
        verts = np.array([[float(x) for x in lines[i].split()[:3]] for i in range(n_vert)], dtype=np.float64)
        polygons = []
        for i in range(n_vert, n_vert + n_face):
            items = lines[i].split()
            k = int(items[0])
            polygons.append([int(x) for x in items[1:1 + k]])
    except (IndexError, ValueError) as err:
        raise RejectError(f"malformed OFF: {err}") from None
    if verts.shape != (n_vert, 3) and n_vert:
        raise RejectError("malformed OFF: vertex lines with fewer than 3 coordinates")
    return Mesh(verts.reshape(-1, 3), _triangulate([p for p in polygons if len(p) >= 3]))


def _load_trimesh(path: Path) -> Mesh:
    logging.getLogger("trimesh").setLevel(logging.ERROR)  # missing .mtl/textures are normal and not our concern
    try:
        loaded = trimesh.load(str(path), process=False, skip_materials=True)
        if isinstance(loaded, trimesh.Scene):  # glTF/glb/multi-object: every node, with its transform applied
            parts = loaded.dump(concatenate=False)
            surfaces = [g for g in parts if isinstance(g, trimesh.Trimesh) and len(g.faces)]
            if not surfaces:
                kinds = sorted({type(g).__name__ for g in parts}) or ["nothing"]
                raise RejectError(f"no faces: the scene holds {', '.join(kinds)}, not a surface")
            loaded = trimesh.util.concatenate(surfaces)
    except RejectError:
        raise
    except Exception as err:  # trimesh raises many types for corrupt input
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RejectError(f"cannot parse {path.suffix.lower()[1:]}: {reason[:200]}") from None
    if isinstance(loaded, trimesh.PointCloud):
        raise RejectError(f"no faces: a point cloud of {len(loaded.vertices)} points, not a surface")
    vertices = getattr(loaded, "vertices", None)
    faces = getattr(loaded, "faces", None)
    if vertices is None or len(vertices) == 0:
        raise RejectError("no geometry: the file holds no vertices")
    if faces is None or len(faces) == 0:
        raise RejectError(f"no faces: {len(vertices)} vertices but no triangles, not a surface")
    return Mesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64))


def clean_mesh(mesh: Mesh, max_faces: int) -> Mesh:
    """Validate and drop degenerate faces; RejectError names what is wrong."""
    v, f = mesh.vertices, mesh.faces
    if len(f) == 0:
        raise RejectError("no faces: a point cloud or line set, not a surface")
    if len(f) > max_faces:
        raise RejectError(f"too many faces: {len(f)} > limit {max_faces} (geometry.max_faces)")
    if f.min() < 0 or f.max() >= len(v):
        raise RejectError(f"face indices out of range 0..{len(v) - 1}")
    bad = ~np.isfinite(v).all(axis=1)
    used_bad = bad[f].any(axis=1)
    if used_bad.any():
        raise RejectError(f"non-finite vertex coordinates (NaN/inf) in {int(bad.sum())} of {len(v)} vertices")
    tri = v[f]
    extent = tri.reshape(-1, 3).max(0) - tri.reshape(-1, 3).min(0)
    if not np.isfinite(extent).all() or extent.max() > 1e30:
        raise RejectError(f"coordinates too large to normalise (extent {extent.max():.3g})")
    scale = max(float(extent.max()), 1e-300)
    cross = np.cross((tri[:, 1] - tri[:, 0]) / scale, (tri[:, 2] - tri[:, 0]) / scale)
    area = np.linalg.norm(cross, axis=1)
    keep = area > 1e-12
    if not keep.any():
        raise RejectError(f"only degenerate faces: all {len(f)} faces have zero area")
    if extent.min() <= 1e-4 * extent.max():
        raise RejectError(f"flat mesh (extents {np.array2string(extent, precision=3)}): no volume to voxelise")
    return Mesh(v, f[keep])


VERTICES_PER_FACE = 3  # a mesh may hold at most this many vertices per face geometry.max_faces allows (an unwelded
# triangle soup has 3): the parsers allocate per vertex, used or not


def sniff_mesh(path: Path, suffix: str, max_vertices: int) -> None:
    """Refuse before parsing what would only cost time and memory: NUL bytes in a text format (obj, off, an ascii
    ply header), and more vertices than max_vertices, counted from the obj's `v` lines or the ply header.

    Raises:
        RejectError: naming what was found.
    """
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
        if suffix in (".obj", ".off") and b"\0" in head:
            raise RejectError(f"binary data (NUL bytes) in a text {suffix[1:]} file: not a mesh")
        if suffix == ".ply":
            declared = re.search(rb"element vertex (\d+)", head.split(b"end_header")[0])
            if declared and int(declared.group(1)) > max_vertices:
                raise RejectError(f"too many vertices: {int(declared.group(1))} declared > limit {max_vertices} "
                                  f"({VERTICES_PER_FACE} x geometry.max_faces)")
        if suffix != ".obj":
            return
        count, tail = (1 if head.startswith(b"v ") else 0), b""
        handle.seek(0)
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            block = tail + chunk
            count += block.count(b"\nv ") + block.count(b"\nv\t")
            tail = block[-2:]  # a line break split across chunks
            if count > max_vertices:
                raise RejectError(f"too many vertices: more than {max_vertices} `v` lines (limit: "
                                  f"{VERTICES_PER_FACE} x geometry.max_faces)")


def load_mesh(path: str | Path, max_faces: int = 5_000_000, max_bytes: float = 2**30) -> Mesh:
    """Read a mesh file (obj/off/ply/stl/glb/gltf) into triangles, or raise RejectError with the reason."""
    path = Path(path)
    check_file(path, max_bytes)
    suffix = path.suffix.lower()
    if suffix not in MESH_EXTENSIONS:
        raise RejectError(f"unsupported extension {suffix!r} (expected one of {', '.join(MESH_EXTENSIONS)})")
    sniff_mesh(path, suffix, VERTICES_PER_FACE * max_faces)
    mesh = read_off(path) if suffix == ".off" else _load_trimesh(path)
    return clean_mesh(mesh, max_faces)


@dataclass
class Binvox:
    """A binvox grid: occupancy[i, j, k] is the voxel at translate + scale * ((i, j, k) + 0.5) / dim."""

    occupancy: np.ndarray  # (D, D, D) bool, axes x, y, z
    translate: np.ndarray  # (3,) the grid's minimum corner in model coordinates
    scale: float  # the grid's side length in model coordinates; voxel edge = scale / dim

    @property
    def voxel_size(self) -> float:
        return self.scale / self.occupancy.shape[0]


def read_binvox(path: str | Path, max_bytes: float = float("inf"), max_dim: int = 1024) -> Binvox:
    """Read a .binvox file exactly: header fields in any order, comments, extra white space; run-length data.

    Raises:
        RejectError: not binvox, a missing or malformed field, data shorter or longer than dim^3, a file larger
            than max_bytes or a dim above max_dim (checked before any voxel is decoded: run-length data of a few
            MB can claim 1024^3 voxels).
    """
    path = Path(path)
    check_file(path, max_bytes)
    raw = path.read_bytes()
    if not raw.startswith(b"#binvox"):
        raise RejectError("not a binvox file: missing '#binvox' header")
    fields, pos = {}, 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise RejectError("truncated binvox header: no 'data' line")
        line = raw[pos:end].decode("ascii", errors="replace").split("#", 1)[0].strip()
        pos = end + 1
        if not line:
            continue
        key, *values = line.split()
        if key == "data":
            break
        fields[key] = values
    try:
        dims = [int(x) for x in fields["dim"]]
        translate = np.array([float(x) for x in fields.get("translate", ["0", "0", "0"])])
        scale = float(fields.get("scale", ["1"])[0])
    except (KeyError, ValueError, IndexError) as err:
        raise RejectError(f"malformed binvox header field: {err}") from None
    if len(dims) != 3 or len(set(dims)) != 1 or dims[0] <= 0:
        raise RejectError(f"binvox dim must be three equal positive sizes, got {dims}")
    if dims[0] > max_dim:
        raise RejectError(f"binvox dim {dims[0]} > limit {max_dim} (geometry.max_binvox_dim)")
    data = np.frombuffer(raw[pos:], dtype=np.uint8)
    if len(data) % 2:
        data = data[:-1]
    values, counts = data[0::2], data[1::2].astype(np.int64)
    total = dims[0] ** 3
    if counts.sum() != total:
        raise RejectError(f"truncated or corrupt binvox data: {int(counts.sum())} of {total} voxels")
    flat = np.repeat(values > 0, counts)
    # binvox runs x slowest, then z, then y fastest
    return Binvox(flat.reshape(dims[0], dims[0], dims[0]).transpose(0, 2, 1).copy(), translate, scale)


def voxel_boundary_mesh(occupancy: np.ndarray, origin, voxel_size: float, max_faces: int = 0) -> Mesh:
    """The exact boundary of a set of cubes, outward-facing: two triangles per face between filled and empty voxels.
    RejectError when that is more than max_faces triangles (counted before any is made; 0: no limit)."""
    occ = np.pad(occupancy.astype(bool), 1)
    if max_faces:
        faces = 2 * sum(int(np.count_nonzero(np.diff(occ, axis=axis))) for axis in range(3))
        if faces > max_faces:
            raise RejectError(f"voxel surface of {faces} triangles > limit {max_faces} (geometry.max_faces)")
    quads = []
    for axis in range(3):
        diff = np.diff(occ.astype(np.int8), axis=axis)  # +1: empty -> filled, -1: filled -> empty
        for sign in (1, -1):
            idx = np.argwhere(diff == sign)
            if len(idx) == 0:
                continue
            base = idx.astype(np.float64)
            base[:, axis] += 1.0  # the face lies between index and index+1 of the padded grid
            u, w = [a for a in range(3) if a != axis]
            corners = np.repeat(base[:, None, :], 4, axis=1)
            corners[:, 1, u] += 1
            corners[:, 2, u] += 1
            corners[:, 2, w] += 1
            corners[:, 3, w] += 1
            normal_along_axis = 1 if axis != 1 else -1  # sign of (e_u x e_w) . e_axis
            outward_flip = normal_along_axis * sign > 0  # outward is -axis where empty -> filled
            quads.append(corners[:, ::-1] if outward_flip else corners)
    if not quads:
        raise RejectError("empty voxel grid: no filled voxels")
    corners = np.concatenate(quads) - 1.0  # undo the padding
    grid_points, index = np.unique(corners.reshape(-1, 3), axis=0, return_inverse=True)
    quad = index.reshape(-1, 4)
    faces = np.concatenate([quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]])
    return Mesh(grid_points * voxel_size + np.asarray(origin, dtype=np.float64), faces.astype(np.int64))
