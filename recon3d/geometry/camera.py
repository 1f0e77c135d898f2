"""The pinhole camera shared by our renders and the 3D-R2N2 data.

Convention (measured against 3D-R2N2's own renders and metadata, see tests/geometry/test_camera.py): the world is
Y-up; a view with azimuth a, elevation e and distance d puts the camera at
d * (cos e cos a, sin e, cos e sin a), looking at the origin with +Y up. 3D-R2N2 stores distance as a ratio of 1.75
and uses a 35 mm lens on a 32 mm sensor, so the focal length is 35/32 of the image width in pixels. Extrinsics are in
the OpenCV convention: camera x to the right of the image, y down, z forward; pixel (u, v) = K (R x + t), with pixel
centres at integer + 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

R2N2_DISTANCE_UNIT = 1.75  # 3D-R2N2's metadata stores distance / 1.75
R2N2_FOCAL_PER_WIDTH = 35.0 / 32.0  # 35 mm lens, 32 mm sensor
UNIT_CUBE_RADIUS = 0.5 * np.sqrt(3.0)  # bounding sphere of [-0.5, 0.5]^3


@dataclass(frozen=True)
class Views:
    """Cameras for V views: angles in degrees, intrinsics K and world-to-camera [R | t]."""

    azimuth: np.ndarray  # (V,) degrees
    elevation: np.ndarray  # (V,) degrees
    distance: np.ndarray  # (V,) world units
    intrinsics: np.ndarray  # (V, 3, 3)
    extrinsics: np.ndarray  # (V, 3, 4)

    def __len__(self) -> int:
        return len(self.azimuth)

    def pose_array(self) -> np.ndarray:
        """(V, 3) float32: azimuth, elevation (degrees), distance."""
        return np.stack([self.azimuth, self.elevation, self.distance], axis=1).astype(np.float32)


def camera_position(azimuth_deg: np.ndarray, elevation_deg: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """(V, 3) camera centres in the 3D-R2N2 convention."""
    a = np.radians(np.asarray(azimuth_deg, dtype=np.float64))
    e = np.radians(np.asarray(elevation_deg, dtype=np.float64))
    d = np.asarray(distance, dtype=np.float64)
    return np.stack([np.cos(e) * np.cos(a), np.sin(e), np.cos(e) * np.sin(a)], axis=-1) * d[..., None]


def look_at(eye: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """(3, 4) world-to-camera [R | t] for a camera at `eye` (3,) looking at `target` with +Y up.

    Raises:
        ValueError: the viewing direction is vertical (up is undefined).
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    norm = np.linalg.norm(right)
    if norm < 1e-9:
        raise ValueError(f"camera at {eye.tolist()} looks straight up or down: no up direction")
    right /= norm
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return np.concatenate([rotation, (-rotation @ eye)[:, None]], axis=1)


def intrinsics(focal_px: float, size: int) -> np.ndarray:
    """(3, 3) K for a square image of `size` pixels with the principal point at its centre."""
    return np.array([[focal_px, 0.0, size / 2.0], [0.0, focal_px, size / 2.0], [0.0, 0.0, 1.0]])


def focal_for_padding(size: int, padding_px: float, distance: float) -> float:
    """Focal length (px) at which the unit cube's bounding sphere, seen from `distance`, keeps `padding_px` free."""
    half_angle = np.arcsin(min(UNIT_CUBE_RADIUS / distance, 0.999))
    return (size / 2.0 - padding_px) / np.tan(half_angle)


def make_views(azimuth: np.ndarray, elevation: np.ndarray, distance: np.ndarray, focal_px: float,
               size: int) -> Views:
    """Cameras for the given angles (degrees) and distances, all with the same focal length."""
    azimuth, elevation, distance = (np.asarray(x, dtype=np.float64) for x in (azimuth, elevation, distance))
    eyes = camera_position(azimuth, elevation, distance)
    extr = np.stack([look_at(eye) for eye in eyes]) if len(eyes) else np.zeros((0, 3, 4))
    intr = np.repeat(intrinsics(focal_px, size)[None], len(eyes), axis=0)
    return Views(azimuth, elevation, distance, intr, extr)


def right_eye(views: Views, baseline: float) -> Views:
    """The rectified right-eye cameras of `views`: each camera moved by `baseline` along its own x axis (to the
    right of the image), same orientation and intrinsics. A point at depth z then appears f * baseline / z pixels
    further left: right(u, v) = left(u + f b / z, v)."""
    extr = views.extrinsics.copy()
    extr[:, 0, 3] -= baseline  # camera centre c + b R^T e_x: t' = -R c' = t - b e_x
    return Views(views.azimuth, views.elevation, views.distance, views.intrinsics, extr)


def sample_views(count: int, rng: np.random.Generator, *, size: int, azimuth_range, elevation_range,
                 distance_range, focal_px: float = 0.0, padding_px: float = 0.0) -> Views:
    """`count` random views, uniform in the given ranges; focal 0 means 3D-R2N2's lens (35/32 x size)."""
    az = rng.uniform(*azimuth_range, size=count)
    el = rng.uniform(*elevation_range, size=count)
    dist = rng.uniform(*distance_range, size=count)
    if padding_px > 0:
        focal = focal_for_padding(size, padding_px, float(distance_range[0]))
    else:
        focal = focal_px if focal_px > 0 else R2N2_FOCAL_PER_WIDTH * size
    return make_views(az, el, dist, focal, size)


def project(points: np.ndarray, intr: np.ndarray, extr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (P, 3) with K (3, 3) and [R | t] (3, 4): pixel coordinates (P, 2) and depth (P,)."""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (P, 3), got {points.shape}")
    cam = points @ extr[:, :3].T + extr[:, 3]
    depth = cam[:, 2]
    pix = cam @ intr.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pix[:, :2] / pix[:, 2:3]
    return uv, depth


def volume_depth_range(extr: np.ndarray) -> tuple[float, float]:
    """(near, far) camera depths that enclose the unit cube's bounding sphere for a camera looking at the origin."""
    distance = float(np.linalg.norm(extr[:, 3]))
    return distance - UNIT_CUBE_RADIUS, distance + UNIT_CUBE_RADIUS


def volume_slice_depth(slices: np.ndarray, extr: np.ndarray, depth: int) -> np.ndarray:
    """Camera depth z of continuous slice coordinates of a `depth`-slice view-aligned volume (centres at integers)."""
    near, far = volume_depth_range(extr)
    return near + (slices + 0.5) * (far - near) / depth


def volume_cell_pixel(cells: np.ndarray, size: int, grid: int) -> np.ndarray:
    """Pixel coordinate of continuous row or column coordinates of a `grid`-cell volume over a `size`-pixel image."""
    return (cells + 0.5) * size / grid


def volume_cell_points(cells: np.ndarray, intr: np.ndarray, extr: np.ndarray, size: int, grid: int,
                       depth: int) -> np.ndarray:
    """Camera-frame points (N, 3) of continuous cell coordinates (N, 3) = (slice, row, column) of a view-aligned
    volume: `grid` x `grid` columns tiling the `size`-pixel image, `depth` slices evenly spaced in camera depth z
    over `volume_depth_range` (cell centres at integer coordinates). K may mirror x (a flipped crop)."""
    z = volume_slice_depth(cells[:, 0], extr, depth)
    v, u = volume_cell_pixel(cells[:, 1], size, grid), volume_cell_pixel(cells[:, 2], size, grid)
    x = (u - intr[0, 2]) * z / intr[0, 0]
    y = (v - intr[1, 2]) * z / intr[1, 1]
    return np.stack([x, y, z], axis=-1)


def view_aligned_occupancy(voxels: np.ndarray, intr: np.ndarray, extr: np.ndarray, size: int, grid: int,
                           depth: int, depth_samples: int = 4) -> np.ndarray:
    """(depth, grid, grid) bool: the solid `voxels` (R, R, R) over [-0.5, 0.5]^3 resampled into the view's frustum
    (VRN's target: rows and columns follow the image, slices follow depth). A cell is occupied when the solid
    holds any of `depth_samples` points spread along its depth on the ray through its centre (a slice is several
    voxels deep: one sample would miss thin parts).

    Raises:
        ValueError: voxels is not a cube.
    """
    res = voxels.shape[0]
    if voxels.shape != (res, res, res):
        raise ValueError(f"voxels must be (R, R, R), got {voxels.shape}")
    offsets = (np.arange(depth_samples) + 0.5) / depth_samples - 0.5
    z = volume_slice_depth(np.arange(depth)[:, None] + offsets, extr, depth)  # (depth, samples)
    pixels = volume_cell_pixel(np.arange(grid), size, grid)
    rays = np.ones((grid, grid, 3))  # camera point = z * (x/z, y/z, 1) of each (row, column)
    rays[..., 0] = ((pixels - intr[0, 2]) / intr[0, 0])[None, :]
    rays[..., 1] = ((pixels - intr[1, 2]) / intr[1, 1])[:, None]
    rot, shift = extr[:, :3], extr[:, 3]
    # voxel coordinate = (R^T (z * ray - t) + 0.5) * res, one axis at a time (no (N, 3) point arrays)
    direction, origin = (rays @ rot) * res, (0.5 - shift @ rot) * res
    flat = np.zeros((depth, grid, grid, depth_samples), np.int64)
    inside = np.ones(flat.shape, dtype=bool)
    for axis in range(3):
        index = np.floor(direction[None, :, :, None, axis] * z[:, None, None, :] + origin[axis]).astype(np.int64)
        inside &= (index >= 0) & (index < res)
        flat = flat * res + index
    return (voxels.reshape(-1)[np.where(inside, flat, 0)] & inside).any(-1)
