"""The shard schema: the one place that names the members of a sample and encodes/decodes them.

A sample's key is `<category>/<shape_id>` (no dots: WebDataset splits member names at the first dot of the
basename). Members, all lower case:

    meta.json           category, shape_id, source file, split, normalisation, point grid, counts
    voxels.npy          (R, R, R/8) uint8: the stored solid, bits packed along z (np.packbits)
    voxels_fine.npy     the fine solid, packed the same way (optional)
    points_<r>.npy      (P, 3) uint8: fine-grid voxel indices; position = (index + 0.5) / point_grid - 0.5
    values_<r>.npy      (ceil(P/8),) uint8: occupancy of those points, packed bits
    view_<vv>.png       one rendered view (RGBA; grayscale for IM-NET hdf5 input)
    camera_pose.npy     (V, 3) float32: azimuth, elevation (degrees), distance
    camera_k.npy        (V, 3, 3) float32 intrinsics, pixels
    camera_rt.npy       (V, 3, 4) float32 world-to-camera [R | t], OpenCV axes (x right, y down, z forward)
    right_<vv>.png      the right-eye view of view vv (render.stereo_baseline > 0): same K, the camera moved by the
                        baseline along its own x axis, so right(u, v) = left(u + disparity, v)
    camera_rt_right.npy (V, 3, 4) float32 world-to-camera [R | t] of the right-eye views
    surface_points.npy  (S, 3) float16: points on the normalised mesh (area-uniform), for surface metrics
    surface_normals.npy (S, 3) int8: their face normals x 127 (sign follows the mesh's winding)

Arrays are .npy read with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from typing import Dict

import numpy as np

FORMAT = "recon3d-shards/1"
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


def view_member(index: int) -> str:
    return f"view_{index:02d}.png"


def is_view_member(name: str) -> bool:
    return name.startswith("view_") and name.endswith(".png")


def right_view_member(index: int) -> str:
    return f"right_{index:02d}.png"


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(name: str) -> str:
    """A key-safe version of a file or folder name; a short hash of the original keeps distinct names distinct."""
    cleaned = _UNSAFE.sub("_", name).strip("_") or "unnamed"
    if cleaned == name:
        return name
    return f"{cleaned}-{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def make_key(category: str, shape_id: str) -> str:
    return f"{safe_name(category)}/{safe_name(shape_id)}"


def split_by_hash(key: str, fractions=(0.8, 0.1, 0.1)) -> str:
    """Deterministic train/val/test assignment from a hash of the key (stable across machines and runs)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
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


def unpack_values(data: bytes, count: int) -> np.ndarray:
    packed = load_npy(data)
    if packed.dtype != np.uint8 or packed.ndim != 1 or len(packed) != (count + 7) // 8:
        raise ValueError(f"packed values for {count} points must be ({(count + 7) // 8},) uint8, got {packed.shape}")
    return np.unpackbits(packed, count=count).astype(bool)


def pack_surface(points: np.ndarray, normals: np.ndarray) -> Dict[str, bytes]:
    return {SURFACE_POINTS: npy_bytes(points.astype(np.float16)),
            SURFACE_NORMALS: npy_bytes(np.clip(np.rint(normals * 127), -127, 127).astype(np.int8))}


def unpack_surface(sample: Dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(S, 3) float32 points and unit normals of a sample's stored surface."""
    normals = load_npy(sample[SURFACE_NORMALS]).astype(np.float32)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-6)
    return load_npy(sample[SURFACE_POINTS]).astype(np.float32), normals


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def load_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)


def json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_meta(sample: Dict[str, bytes]) -> dict:
    return json.loads(sample[META])
