"""The shard schema: the one place that names the members of a sample and encodes/decodes them.

A sample's key is `<category>/<shape_id>` (no dots: WebDataset splits member names at the first dot of the
basename). Members, all lower case:

    meta.json           category, shape_id, source file, split, normalisation, point grid, counts
    voxels.npy          (R, R, R/8) uint8: the stored solid, bits packed along z (np.packbits)
    voxels_fine.npy     the fine solid, packed the same way (optional)
    points_<r>.npy      (P, 3) uint8: cell indices of the point grid; position = (index + 0.5) / grid - 0.5, grid =
                        meta's point_grids[r] when present (IM-NET hdf5), else its point_grid (the fine grid)
    values_<r>.npy      (ceil(P/8),) uint8: occupancy of those points, packed bits
    views.zlib          every rendered view (RGBA; grayscale for IM-NET hdf5 input), each its own zlib stream of
                        raw (H, W, C) uint8 pixels, so one view decodes without the others (`pack_views`)
    camera_pose.npy     (V, 3) float32: azimuth, elevation (degrees), distance
    camera_k.npy        (V, 3, 3) float32 intrinsics, pixels
    camera_rt.npy       (V, 3, 4) float32 world-to-camera [R | t], OpenCV axes (x right, y down, z forward)
    right_views.zlib    the right-eye views (render.stereo_baseline > 0), packed the same way: same K, the camera
                        moved by the baseline along its own x axis, so right(u, v) = left(u + disparity, v)
    camera_rt_right.npy (V, 3, 4) float32 world-to-camera [R | t] of the right-eye views
    surface_points.npy  (S, 3) float16: points on the normalised mesh (area-uniform), for surface metrics
    surface_normals.npy (S, 3) int8: their face normals x 127 (sign follows the mesh's winding)

Arrays are .npy read with allow_pickle=False. Shards of format 1 held each view as its own PNG member
(view_<vv>.png, right_<vv>.png); `view_count` and `view_image` read both layouts.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import struct
import zlib
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

FORMAT = "recon3d-shards/2"  # 2: views packed in one member (views.zlib)
META = "meta.json"
VOXELS = "voxels.npy"
VOXELS_FINE = "voxels_fine.npy"
CAMERA_POSE = "camera_pose.npy"
CAMERA_K = "camera_k.npy"
CAMERA_RT = "camera_rt.npy"
CAMERA_RT_RIGHT = "camera_rt_right.npy"
SURFACE_POINTS = "surface_points.npy"
SURFACE_NORMALS = "surface_normals.npy"
SPLITS = ("train", "val", "test")


def points_member(resolution: int) -> str:
    return f"points_{resolution}.npy"


def values_member(resolution: int) -> str:
    return f"values_{resolution}.npy"


VIEWS = "views.zlib"
RIGHT_VIEWS = "right_views.zlib"
try:  # ISA-L's inflate: the same zlib streams, faster (docs/results.md; inflating a view dominates its decoding)
    from isal.isal_zlib import decompressobj as _inflater
except ImportError:  # pragma: no cover - isal is a dependency; a platform without its wheel falls back
    _inflater = zlib.decompressobj
MAX_VIEW_BYTES = 64 * 2**20  # a view's declared size at most (4096 x 4096 RGBA); the renders are 137 x 137
_VIEWS_HEAD = struct.Struct("<4sHHBH")  # magic, height, width, channels, view count; then one uint32 size per view
_VIEWS_MAGIC = b"R3DV"


def view_member(index: int) -> str:
    """A view's member in format-1 shards (one PNG per view)."""
    return f"view_{index:02d}.png"


def is_view_member(name: str) -> bool:
    return name.startswith("view_") and name.endswith(".png")


def right_view_member(index: int) -> str:
    return f"right_{index:02d}.png"


def pack_views(images) -> bytes:
    """Views of one sample, all (H, W, C) or (H, W) uint8 of one shape, as the bytes of a views member."""
    arrays = [np.ascontiguousarray(a[..., None] if a.ndim == 2 else a, dtype=np.uint8) for a in images]
    if not arrays or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError("pack_views needs one or more views of one shape")
    height, width, channels = arrays[0].shape
    streams = [zlib.compress(a.tobytes(), 6) for a in arrays]
    return b"".join([_VIEWS_HEAD.pack(_VIEWS_MAGIC, height, width, channels, len(streams)),
                     struct.pack(f"<{len(streams)}I", *map(len, streams)), *streams])


def _views_table(data) -> tuple:
    """(height, width, channels, [(offset, size)] per view) of a views member (ValueError when it is not one)."""
    if len(data) < _VIEWS_HEAD.size:
        raise ValueError("views member too short")
    magic, height, width, channels, count = _VIEWS_HEAD.unpack_from(data)
    if magic != _VIEWS_MAGIC:
        raise ValueError("not a views member")
    sizes = struct.unpack_from(f"<{count}I", data, _VIEWS_HEAD.size)
    spans, offset = [], _VIEWS_HEAD.size + 4 * count
    for size in sizes:
        spans.append((offset, size))
        offset += size
    if offset != len(data):
        raise ValueError(f"views member holds {len(data)} bytes, its table says {offset}")
    return height, width, channels, spans


def view_count(sample: Dict[str, bytes], right: bool = False) -> int:
    """How many (right-eye) views a sample holds, in either layout."""
    packed = RIGHT_VIEWS if right else VIEWS
    if packed in sample:
        return len(_views_table(sample[packed])[3])
    prefix = "right_" if right else "view_"
    return sum(1 for name in sample if name.startswith(prefix) and name.endswith(".png"))


def view_image(sample: Dict[str, bytes], index: int, right: bool = False) -> np.ndarray:
    """View `index` of a sample (a right-eye view with `right`), (H, W, C) uint8, decoding only that one."""
    packed = RIGHT_VIEWS if right else VIEWS
    if packed not in sample:
        image = load_png(sample[right_view_member(index) if right else view_member(index)])
        return image[..., None] if image.ndim == 2 else image
    data = sample[packed]
    height, width, channels, spans = _views_table(data)
    offset, size = spans[index]
    expected = height * width * channels
    if expected > MAX_VIEW_BYTES:
        raise ValueError(f"view {index}: declared {height}x{width}x{channels}, more than a view can be")
    inflater = _inflater()  # inflated no further than the declared size: a small member cannot fill the memory
    pixels = inflater.decompress(memoryview(data)[offset:offset + size], expected + 1)
    if len(pixels) != expected or not inflater.eof:
        found = f"more than {expected}" if len(pixels) > expected else f"{len(pixels)}"
        raise ValueError(f"view {index}: inflates to {found} bytes, expected {height}x{width}x{channels}")
    return np.frombuffer(pixels, np.uint8).reshape(height, width, channels)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(name: str) -> str:
    """A key-safe version of a file or folder name; a short hash of the original keeps distinct names distinct."""
    cleaned = _UNSAFE.sub("_", name).strip("_") or "unnamed"
    if cleaned == name:
        return name
    return f"{cleaned}-{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def make_key(category: str, shape_id: str) -> str:
    return f"{safe_name(category)}/{safe_name(shape_id)}"


def take_in_turn(keys: Sequence[str], count: int) -> List[str]:
    """`count` of `keys` taken in turn from each category (a key is <category>/<shape_id>; each category's first
    keys first), returned in their given order: a split whose shards run category by category would otherwise show
    only its first category."""
    by_category: Dict[str, List[str]] = {}
    for key in keys:
        by_category.setdefault(key.split("/")[0], []).append(key)
    chosen: set = set()
    for rank in range(max(map(len, by_category.values()), default=0)):
        for members in by_category.values():
            if rank < len(members) and len(chosen) < count:
                chosen.add(members[rank])
    return [key for key in keys if key in chosen]


def key_hash(key: str) -> float:
    """A number in [0, 1) from a hash of the key: the same on every machine and in every run."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_by_hash(key: str, fractions=(0.8, 0.1, 0.1)) -> str:
    """Deterministic train/val/test assignment from a hash of the key (stable across machines and runs)."""
    h = key_hash(key)
    edge = 0.0
    for split, fraction in zip(SPLITS, fractions):
        edge += fraction
        if h < edge:
            return split
    return SPLITS[-1]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


_NPY_HEADERS: Dict[bytes, tuple] = {}  # header bytes -> (dtype, shape, fortran order, data offset)


def load_npy(data: bytes) -> np.ndarray:
    """A .npy member as a read-only array over its bytes (no copy). Headers repeat across samples (same shapes),
    so each distinct one is parsed once; object arrays (pickles) are refused as np.load(allow_pickle=False) does."""
    if data[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy member")
    end = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    header = bytes(data[:end])
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        buf = io.BytesIO(header)
        version = np.lib.format.read_magic(buf)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(buf)
        if dtype.hasobject:
            raise ValueError("object arrays need pickle, which is refused")
        parsed = (dtype, shape, fortran, end)
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[header] = parsed
    dtype, shape, fortran, offset = parsed
    count = math.prod(shape)
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def pack_voxels(grid: np.ndarray) -> bytes:
    if grid.ndim != 3 or grid.shape[2] % 8:
        raise ValueError(f"voxel grid must be (R, R, R) with R a multiple of 8, got {grid.shape}")
    return npy_bytes(np.packbits(grid.astype(bool), axis=-1))


def voxels_digest(data: bytes) -> str:
    """A short digest of a packed voxels member: equal digests, identical geometry (`shards summary`, `verify`)."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def voxel_bits(data: bytes) -> np.ndarray:
    """(R, R, R/8) uint8 of a packed voxels member, still packed (checked)."""
    packed = load_npy(data)
    if packed.ndim != 3 or packed.dtype != np.uint8 or packed.shape[2] * 8 != packed.shape[0]:
        raise ValueError(f"packed voxels must be (R, R, R/8) uint8, got {packed.shape} {packed.dtype}")
    return packed


def unpack_voxels(data: bytes) -> np.ndarray:
    """(R, R, R) bool from a packed voxels member."""
    return np.unpackbits(voxel_bits(data), axis=-1).view(bool)


def pack_values(values: np.ndarray) -> bytes:
    return npy_bytes(np.packbits(values.astype(bool).ravel()))


def value_bits(data: bytes, count: int) -> np.ndarray:
    """(ceil(count/8),) uint8 of a packed values member for `count` points, still packed (checked)."""
    packed = load_npy(data)
    if packed.dtype != np.uint8 or packed.ndim != 1 or len(packed) != (count + 7) // 8:
        raise ValueError(f"packed values for {count} points must be ({(count + 7) // 8},) uint8, got {packed.shape}")
    return packed


def unpack_values(data: bytes, count: int) -> np.ndarray:
    return np.unpackbits(value_bits(data, count), count=count).astype(bool)


def pack_surface(points: np.ndarray, normals: np.ndarray) -> Dict[str, bytes]:
    return {SURFACE_POINTS: npy_bytes(points.astype(np.float16)),
            SURFACE_NORMALS: npy_bytes(np.clip(np.rint(normals * 127), -127, 127).astype(np.int8))}


def unpack_surface(sample: Dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(S, 3) float32 points and unit normals of a sample's stored surface."""
    normals = load_npy(sample[SURFACE_NORMALS]).astype(np.float32)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-6)
    return load_npy(sample[SURFACE_POINTS]).astype(np.float32), normals


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def load_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)


def json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_meta(sample: Dict[str, bytes]) -> dict:
    return json.loads(sample[META])


IMNET_POINT_GRID = 256  # IM-NET-pytorch's hdf5 point coordinates index a 256^3 grid (recon3d/data/writing/imnet.py)


def point_grid(manifest: dict, resolution: int) -> int:
    """The grid the point indices of set `resolution` refer to, from a shard set's manifest (meta.json's point_grids,
    or point_grid for every set)."""
    if manifest["source"]["kind"] == "imnet_hdf5":
        resolution_layout = manifest["config"]["source"].get("hdf5_point_grid") == "resolution"
        return resolution if resolution_layout else IMNET_POINT_GRID
    return int(manifest["config"]["geometry"]["fine_resolution"])


def sample_point_grid(sample: Dict[str, bytes], resolution: int) -> int:
    """The grid of one sample's point set `resolution`, from its meta.json."""
    meta = decode_meta(sample)
    return int(meta.get("point_grids", {}).get(str(resolution)) or meta["point_grid"])
