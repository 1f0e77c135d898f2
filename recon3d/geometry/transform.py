"""Normalisation of a mesh into the cube [-0.5, 0.5]^3: Y up, front toward -Z, X to the object's right."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_AXIS_VECTORS = {
    "+x": (1.0, 0.0, 0.0), "-x": (-1.0, 0.0, 0.0),
    "+y": (0.0, 1.0, 0.0), "-y": (0.0, -1.0, 0.0),
    "+z": (0.0, 0.0, 1.0), "-z": (0.0, 0.0, -1.0),
}


@dataclass(frozen=True)
class Normalisation:
    """x_normalised = scale * (rotation @ x_source) + translation."""

    rotation: np.ndarray  # (3, 3) float64, a proper rotation
    scale: float
    translation: np.ndarray  # (3,) float64

    def apply(self, vertices: np.ndarray) -> np.ndarray:
        return self.scale * (vertices @ self.rotation.T) + self.translation

    def as_dict(self) -> dict:
        return {"rotation": self.rotation.tolist(), "scale": float(self.scale),
                "translation": self.translation.tolist()}


def axis_rotation(up: str, front: str) -> np.ndarray:
    """Rotation taking the source `up` axis to +Y and the source `front` axis to -Z (both like "+z", "-y").

    Raises:
        ValueError: an unknown axis name, or up and front on the same axis.
    """
    if up not in _AXIS_VECTORS or front not in _AXIS_VECTORS:
        raise ValueError(f"axes must be one of {sorted(_AXIS_VECTORS)}, got up={up!r} front={front!r}")
    u = np.array(_AXIS_VECTORS[up])
    f = np.array(_AXIS_VECTORS[front])
    if abs(float(u @ f)) > 0.5:
        raise ValueError(f"up={up} and front={front} lie on the same axis")
    right = np.cross(f, u)  # facing f with head toward u, the right hand points along f x u
    return np.stack([right, u, -f])


def surface_centroid(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted centroid of the triangles: the centre of mass of the surface, defined for open meshes too."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        return 0.5 * (vertices.min(0) + vertices.max(0))
    return (tri.mean(axis=1) * area[:, None]).sum(0) / total


def normalise(vertices: np.ndarray, faces: np.ndarray, *, up: str = "+y", front: str = "-z",
              center: str = "mass", half_extent: float = 0.5) -> Normalisation:
    """Find the similarity transform that puts a mesh upright, centred and inside [-half_extent, half_extent]^3.

    Args:
        vertices: (N, 3) float, finite.
        faces: (M, 3) int indices into vertices.
        up, front: the source's up and front axes.
        center: "mass" puts the surface centroid at the origin, "bbox" the bounding-box centre.
        half_extent: after scaling, every vertex satisfies |x|, |y|, |z| <= half_extent.

    Raises:
        ValueError: wrong shapes, or a mesh with no extent.
    """
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"expected vertices (N, 3) and faces (M, 3), got {vertices.shape} and {faces.shape}")
    rotation = axis_rotation(up, front)
    rotated = vertices @ rotation.T
    if center == "mass":
        origin = surface_centroid(rotated, faces)
    elif center == "bbox":
        origin = 0.5 * (rotated.min(0) + rotated.max(0))
    else:
        raise ValueError(f"center must be 'mass' or 'bbox', got {center!r}")
    reach = float(np.abs(rotated - origin).max())
    if not np.isfinite(reach) or reach <= 0:
        raise ValueError("mesh has no extent")
    scale = half_extent / reach
    return Normalisation(rotation=rotation, scale=scale, translation=-scale * origin)
