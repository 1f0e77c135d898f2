"""The unit of work: one input shape -> the members of one sample (or a RejectError with the reason).

Deterministic: the random state of a shape (cameras, point fill-up) is seeded from (seed, key), so the output does
not depend on which worker, process or order prepared it.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

import h5py
import numpy as np

from recon3d.config import Config, GeometryConfig
from recon3d.data import schema
from recon3d.data.writing import imnet
from recon3d.data.writing.formats import RejectError, load_mesh, read_binvox, voxel_boundary_mesh
from recon3d.data.writing.sources import Item
from recon3d.geometry.camera import right_eye, sample_views
from recon3d.geometry.metrics import sample_surface
from recon3d.geometry.render import render_views
from recon3d.geometry.sampling import sample_points
from recon3d.geometry.transform import normalise
from recon3d.geometry.voxelize import solid_voxels, surface_coverage, thin_parts_kept


@dataclass
class Prepared:
    key: str
    members: Dict[str, bytes]
    seconds: Dict[str, float] = field(default_factory=dict)  # per stage, for benchmarks; never stored in shards
    facts: Dict[str, object] = field(default_factory=dict)  # FACTS of its metadata, for the shard's sidecar


FACTS = ("surface_coverage", "low_coverage", "front", "front_from")  # what `shards summary` reports per sample


def item_rng(seed: int, key: str) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([seed, digest])


@contextmanager
def time_limit(seconds: float):
    """Raise RejectError if the block runs longer than `seconds` (main thread of a Unix process only). A parser
    that catches the timer's exception and raises its own (trimesh's loader does: "string is not a file") still
    ends as the time-out."""
    usable = seconds > 0 and hasattr(signal, "setitimer")
    expired = []
    message = f"timed out after {seconds:g} s (geometry.timeout_s)"
    if usable:
        try:
            def _expired(signum, frame):
                expired.append(signum)
                raise RejectError(message)

            previous = signal.signal(signal.SIGALRM, _expired)
        except ValueError:  # not the main thread: no limit
            usable = False
    if usable:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Exception as err:
        if expired and str(err) != message:
            raise RejectError(message) from err
        raise
    finally:
        if usable:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        if expired:
            release_logging_locks()


def release_logging_locks() -> None:
    """Release the logging locks this thread holds. The timer's exception can land inside a logging call (trimesh
    logs as it parses) after it took logging's lock and before the try that releases it: the lock then stays held by
    this thread, which never notices (it is reentrant), and the next thread that logs waits forever (W&B's service
    thread did, in the test suite). Called outside any logging call, where this thread holds none legitimately."""
    handlers = [ref() for ref in list(getattr(logging, "_handlerList", []))]
    for lock in [getattr(logging, "_lock", None)] + [h.lock for h in handlers if h is not None]:
        while lock is not None and hasattr(lock, "_is_owned") and lock._is_owned():
            lock.release()


class _Clock:
    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def normalise_for(vertices, faces, geo: GeometryConfig, up: str = "+y", front: str = "-z"):
    """The normalisation the shards apply to a mesh: upright, centred, inside the padded stored grid."""
    return normalise(vertices, faces, up=up, front=front, center=geo.center,
                     half_extent=0.5 - geo.padding / geo.voxel_resolution)


def solid_for(vertices, faces, geo: GeometryConfig):
    """The shards' voxelisation of a normalised mesh (stored and fine grids, by geometry.voxel_rule)."""
    return solid_voxels(vertices, faces, geo.voxel_resolution, geo.fine_resolution, geo.seal_voxels, geo.voxel_rule)


def point_cells(vertices, faces, solid, resolution: int, geo: GeometryConfig):
    """The labels of the point set at `resolution`: None (the fine solid max pooled, IM-NET's) but under the shapenet
    rule, whose labels are its own solid at that size, as thick as the stored voxels that score the models."""
    if geo.voxel_rule != "shapenet":
        return None
    if resolution == geo.voxel_resolution:
        return solid.coarse
    return thin_parts_kept(vertices, faces, (-0.5, -0.5, -0.5), 1.0 / resolution, resolution, solid.fine)


def _point_members(verts, faces, solid, item: Item, cfg: Config, rng, members: Dict[str, bytes]):
    """IM-NET point sets and surface samples into `members`; returns the point counts and the surface coverage."""
    geo = cfg.geometry
    counts = {}
    for res, count in zip(geo.point_resolutions, geo.point_counts):
        cells = point_cells(verts, faces, solid, res, geo)
        sampled = sample_points(solid.fine, res, count, rng, geo.edge_window, cells)
        members[schema.points_member(res)] = schema.npy_bytes(sampled.indices)
        members[schema.values_member(res)] = schema.pack_values(sampled.values)
        counts[str(res)] = {"points": int(count), "stage": sampled.stage}
    if geo.surface_points:
        points, normals = sample_surface(verts, faces, geo.surface_points, rng)
        members.update(schema.pack_surface(points, normals))
    else:  # the coverage check still needs surface samples: a stream of its own, so the stored ones do not change
        points = sample_surface(verts, faces, 4096, item_rng(cfg.shards.seed + 1, item.key))[0]
    coverage = surface_coverage(points, solid.coarse)
    return counts, coverage


def _mesh_members(vertices, faces, item: Item, cfg: Config, clock: _Clock) -> Dict[str, bytes]:
    geo, ren = cfg.geometry, cfg.render
    rng = item_rng(cfg.shards.seed, item.key)
    norm = normalise_for(vertices, faces, geo, item.up, item.front)
    verts = norm.apply(vertices)
    clock.lap("normalise")
    solid = solid_for(verts, faces, geo)
    if not solid.coarse.any():
        raise RejectError(f"voxelised to an empty solid at {geo.voxel_resolution}^3 (shape thinner than a voxel)")
    members = {schema.VOXELS: schema.pack_voxels(solid.coarse)}
    if geo.store_fine:
        members[schema.VOXELS_FINE] = schema.pack_voxels(solid.fine)
    clock.lap("voxels")
    counts, coverage = _point_members(verts, faces, solid, item, cfg, rng, members)
    clock.lap("points")
    views = sample_views(ren.views, rng, size=ren.image_size, azimuth_range=ren.azimuth_range,
                         elevation_range=ren.elevation_range, distance_range=ren.distance_range,
                         focal_px=ren.focal_px, padding_px=ren.padding_px)
    shading = dict(supersample=ren.supersample, color=ren.color, ambient=ren.ambient)
    images = render_views(verts, faces, views, light_offset=ren.light_offset, **shading)
    if len(images):
        members[schema.VIEWS] = schema.pack_views(images)
    if ren.stereo_baseline > 0 and len(views):
        right = right_eye(views, ren.stereo_baseline)
        # the light is placed relative to the camera: shift it back so both eyes see the same lighting
        light = [ren.light_offset[0] - ren.stereo_baseline, *ren.light_offset[1:]]
        members[schema.RIGHT_VIEWS] = schema.pack_views(render_views(verts, faces, right, light_offset=light,
                                                                     **shading))
        members[schema.CAMERA_RT_RIGHT] = schema.npy_bytes(right.extrinsics.astype(np.float32))
    if len(views):
        members[schema.CAMERA_POSE] = schema.npy_bytes(views.pose_array())
        members[schema.CAMERA_K] = schema.npy_bytes(views.intrinsics.astype(np.float32))
        members[schema.CAMERA_RT] = schema.npy_bytes(views.extrinsics.astype(np.float32))
    clock.lap("views")
    meta = {"normalisation": norm.as_dict(), "faces": int(len(faces)), "sealed_voxels": solid.sealed_voxels,
            "voxel_rule": geo.voxel_rule, "surface_coverage": round(coverage, 4),
            "low_coverage": coverage < geo.coverage_warn, "up": item.up, "front": item.front,
            "front_from": item.front_from,
            "voxel_resolution": geo.voxel_resolution, "point_grid": geo.fine_resolution, "point_sets": counts,
            "views": len(views), "cameras": bool(len(views)), "surface_points": geo.surface_points,
            "stereo_baseline": ren.stereo_baseline if len(views) else 0.0}
    members[schema.META] = meta  # completed by the caller
    return members


def _imnet_members(path: Path, item: Item, cfg: Config, clock: _Clock) -> Dict[str, bytes]:
    with h5py.File(path, "r") as h5:
        members, meta = imnet.row_members(h5, item.row, cfg.source.hdf5_axes, item.point_grid)
    clock.lap("convert")
    members[schema.META] = meta
    return members


def prepare(item: Item, root: str, cfg: Config) -> Prepared:
    """Build every member of `item`'s sample. Raises RejectError with a one-line reason for bad input."""
    clock = _Clock()
    path = Path(root) if Path(root).is_file() else Path(root) / item.path
    geo = cfg.geometry
    with time_limit(geo.timeout_s):
        if item.kind == "imnet_row":
            members = _imnet_members(path, item, cfg, clock)
        else:
            if item.kind == "binvox":
                grid = read_binvox(path, geo.max_file_mb * 2**20, geo.max_binvox_dim)
                mesh = voxel_boundary_mesh(grid.occupancy, grid.translate, grid.voxel_size, geo.max_faces)
            else:
                mesh = load_mesh(path, geo.max_faces, geo.max_file_mb * 2**20)
            clock.lap("load")
            members = _mesh_members(mesh.vertices, mesh.faces, item, cfg, clock)
    meta = members[schema.META]
    meta.update({"key": item.key, "category": item.category, "source": item.path, "row": item.row})
    members[schema.META] = schema.json_bytes(meta)
    facts = {k: meta[k] for k in FACTS if k in meta}
    facts["voxels_digest"] = schema.voxels_digest(members[schema.VOXELS])  # identical geometry in the summary
    return Prepared(item.key, members, clock.seconds, facts)
