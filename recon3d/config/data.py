"""The data half of the configuration schema: where shapes come from (source), how they become voxels and points
(geometry), how they are rendered (render) and how shards are cut (shards). `recon3d.config` assembles the whole
schema and loads it; this module holds no logic beyond each section's own checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from recon3d.errors import ConfigError

AXES = ("+x", "-x", "+y", "-y", "+z", "-z")
VOXEL_RULES = ("binvox", "shapenet", "fill")  # recon3d/geometry/voxelize.py RULES
HDF5_POINT_GRIDS = ("auto", "resolution", "256")  # recon3d/data/writing/imnet.py LAYOUTS
SOURCE_KINDS = ("auto", "folder", "shapenet", "modelnet", "binvox", "imnet_hdf5")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class SourceConfig:
    root: str = ""  # folder of meshes, ShapeNet/ModelNet root, folder of .binvox, or an IM-NET .hdf5 file
    kind: str = "auto"  # auto | folder | shapenet | modelnet | binvox | imnet_hdf5
    up_axis: str = "auto"  # the source's up axis (+x..-z); auto: +z for ModelNet, +y otherwise
    front_axis: str = "auto"  # the source's front axis; auto: -y for ModelNet, -z otherwise (assumed, not detected)
    front_by_category: Dict[str, str] = field(default_factory=dict)  # front axis per category, over front_axis
    categories: List[str] = field(default_factory=list)  # keep only these categories (empty: all)
    limit_per_category: int = 0  # at most this many shapes per category, first in sorted order (0: all)
    hdf5_axes: str = "xyz"  # IM-NET hdf5: which stored axis becomes our x, y, z (e.g. "zyx")
    hdf5_point_grid: str = "auto"  # IM-NET hdf5 points_<r>: auto (told from the data) | resolution (indices of each
    # set's own r^3 grid: the implicit-decoder release) | 256 (256^3 coordinates: IM-NET-pytorch); checked either way
    test_list: str = ""  # text file of the test shapes, one per line (synset/id, category/id or id): those go to
    # test, the rest to train and val (shards.split's train:val proportions); empty: the source's split or shards.split

    def __post_init__(self) -> None:
        _check(self.kind in SOURCE_KINDS, f"source.kind={self.kind!r}: expected one of {SOURCE_KINDS}")
        for name in ("up_axis", "front_axis"):
            value = getattr(self, name)
            _check(value == "auto" or value in AXES, f"source.{name}={value!r}: expected auto or one of {AXES}")
        for category, value in self.front_by_category.items():
            _check(value in AXES, f"source.front_by_category.{category}={value!r}: expected one of {AXES}")
            _check(self.up_axis == "auto" or self.up_axis[1] != value[1],
                   f"source.front_by_category.{category}={value} lies on the up axis {self.up_axis}")
        if self.up_axis != "auto" and self.front_axis != "auto":
            _check(self.up_axis[1] != self.front_axis[1],
                   f"source.up_axis={self.up_axis} and source.front_axis={self.front_axis} must be different axes")
        _check(sorted(self.hdf5_axes) == ["x", "y", "z"], f"source.hdf5_axes={self.hdf5_axes!r}: a permutation of xyz")
        _check(self.hdf5_point_grid in HDF5_POINT_GRIDS,
               f"source.hdf5_point_grid={self.hdf5_point_grid!r}: expected one of {HDF5_POINT_GRIDS}")
        _check(self.limit_per_category >= 0, "source.limit_per_category must be >= 0")


@dataclass
class GeometryConfig:
    center: str = "mass"  # mass (area-weighted surface centroid) | bbox
    voxel_resolution: int = 64  # stored solid voxels per edge
    padding: int = 2  # empty voxels kept on each side of the stored grid (the shape fits inside)
    fine_resolution: int = 256  # inner grid for filling and point labels; a multiple of voxel_resolution
    store_fine: bool = False  # also store the fine_resolution solid (2 MiB per shape at 256^3)
    point_resolutions: List[int] = field(default_factory=lambda: [16, 32, 64])  # IM-NET point sets to store
    point_counts: List[int] = field(default_factory=lambda: [4096, 8192, 32768])  # points per set, in that order
    edge_window: int = 7  # a voxel is "edge" when this cube around it holds both values (odd)
    surface_points: int = 8192  # points (+ normals) sampled on the normalised mesh, for surface metrics (0: none)
    voxel_rule: str = "shapenet"  # shapenet: binvox carving on the stored grid (ShapeNet's walls; thin parts from
    # fine) | binvox: carving at fine_resolution + max pooling (IM-NET's) | fill: flood fill + leak seal + "more than
    # half" pooling (exact for closed meshes, thins sheets; recon3d/geometry/voxelize.py)
    seal_voxels: int = 2  # fill rule only: dilation (stored voxels) sealing holes of leaky meshes; 0 disables it
    coverage_warn: float = 0.95  # flag a sample whose stored solid is farther than a voxel from more of its surface
    max_faces: int = 5_000_000  # reject meshes with more faces (bounds time and memory)
    max_file_mb: float = 1024.0  # reject files larger than this before reading them
    max_binvox_dim: int = 512  # reject .binvox inputs of a larger grid (their header is read first)
    timeout_s: float = 300.0  # reject a shape whose preparation takes longer (0: no limit)

    def __post_init__(self) -> None:
        _check(self.center in ("mass", "bbox"), f"geometry.center={self.center!r}: expected mass or bbox")
        _check(self.voxel_rule in VOXEL_RULES,
               f"geometry.voxel_rule={self.voxel_rule!r}: expected one of {VOXEL_RULES}")
        _check(0 <= self.coverage_warn <= 1, "geometry.coverage_warn must be in [0, 1]")
        _check(self.voxel_resolution >= 8 and self.voxel_resolution % 8 == 0,
               "geometry.voxel_resolution must be a multiple of 8 (voxels are stored bit-packed)")
        _check(self.fine_resolution % self.voxel_resolution == 0,
               f"geometry.fine_resolution={self.fine_resolution} must be a multiple of "
               f"geometry.voxel_resolution={self.voxel_resolution}")
        _check(0 <= 2 * self.padding < self.voxel_resolution, "geometry.padding must be < voxel_resolution / 2")
        _check(self.edge_window % 2 == 1 and self.edge_window >= 3, "geometry.edge_window must be odd and >= 3")
        _check(len(self.point_resolutions) == len(self.point_counts),
               "geometry.point_resolutions and geometry.point_counts must have the same length")
        for res, count in zip(self.point_resolutions, self.point_counts):
            _check(self.fine_resolution % int(res) == 0,
                   f"geometry.point_resolutions: {res} must divide fine_resolution={self.fine_resolution}")
            _check(0 < int(count) <= int(res) ** 3,
                   f"geometry.point_counts for {res}^3: {count}: must be in 1..{int(res) ** 3}")
            _check(int(res) <= 256, f"geometry.point_resolutions: {res} > 256 cannot be stored as uint8")


@dataclass
class RenderConfig:
    views: int = 24  # rendered views per shape (0: none)
    image_size: int = 137  # square image side in pixels
    azimuth_range: List[float] = field(default_factory=lambda: [0.0, 360.0])  # degrees, uniform
    elevation_range: List[float] = field(default_factory=lambda: [25.0, 30.0])  # degrees, uniform
    distance_range: List[float] = field(default_factory=lambda: [0.65 * 1.75, 0.95 * 1.75])  # camera distance
    focal_px: float = 0.0  # focal length in pixels; 0: 3D-R2N2's 35 mm lens on a 32 mm sensor (35/32 x size)
    padding_px: float = 0.0  # >0: choose focal so the whole unit cube stays this far from the border
    supersample: int = 4  # anti-aliasing factor per axis (4: sub-pixel-thin parts still show in alpha)
    color: List[float] = field(default_factory=lambda: [0.72, 0.72, 0.75])  # albedo RGB in [0, 1]
    ambient: float = 0.25  # ambient light fraction
    light_offset: List[float] = field(default_factory=lambda: [0.3, 0.6, 0.0])  # light = camera + offset (camera frame)
    stereo_baseline: float = 0.0  # >0: also render a right-eye view per view, the camera moved this far (world
    # units) along its own x axis (a rectified pair: same orientation and lens, the light kept in place)

    def __post_init__(self) -> None:
        _check(self.views >= 0, "render.views must be >= 0")
        _check(16 <= self.image_size <= 1024, "render.image_size must be in 16..1024")
        for name in ("azimuth_range", "elevation_range", "distance_range"):
            lo_hi = getattr(self, name)
            _check(len(lo_hi) == 2 and lo_hi[0] <= lo_hi[1], f"render.{name} must be [low, high]")
        _check(self.distance_range[0] > 0.9, "render.distance_range must keep the camera outside the unit cube (> 0.9)")
        _check(self.supersample in (1, 2, 3, 4), "render.supersample must be 1..4")
        _check(len(self.color) == 3 and len(self.light_offset) == 3,
               "render.color and render.light_offset take 3 values")
        _check(self.stereo_baseline >= 0, "render.stereo_baseline must be >= 0")


@dataclass
class ShardConfig:
    out_dir: str = "shards/demo"  # output folder: <split>-NNNNNN.tar, manifest.json, rejects.jsonl
    samples_per_shard: int = 256  # samples per tar (the last shard of a split may hold fewer)
    split: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/val/test fractions
    split_by: str = "hash"  # hash: each key by its own hash | category: each category cut in these proportions
    workers: int = 1  # processes preparing meshes in parallel
    seed: int = 0  # seeds cameras and point sampling (per shape, independent of order and workers)

    def __post_init__(self) -> None:
        _check(self.samples_per_shard >= 1, "shards.samples_per_shard must be >= 1")
        _check(len(self.split) == 3 and all(f >= 0 for f in self.split) and abs(sum(self.split) - 1) < 1e-6,
               f"shards.split={list(self.split)}: three fractions (train, val, test) summing to 1")
        _check(self.workers >= 1, "shards.workers must be >= 1")
        _check(self.split_by in ("hash", "category"), f"shards.split_by={self.split_by!r}: hash or category")
