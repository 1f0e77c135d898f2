"""The light field descriptor (LFD) of Chen, Tian, Shen and Ouhyoung, "On Visual Similarity Based 3D Model Retrieval"
(Eurographics 2003), and its distance.

A shape is seen from the 20 vertices of a dodecahedron around it; opposite vertices give mirrored silhouettes with
the same features, so 10 silhouettes make one light field. Ten light fields come from ten rotations of the
dodecahedron. Each silhouette is described by the magnitudes of its Zernike moments up to order 10 (36 values,
invariant to rotation and mirroring in the image) and by 10 Fourier descriptors of its contour (the centroid-distance
signature: invariant to the contour's start point, rotation and mirroring). Between two light fields the distance is
the smallest, over the 60 rotations of the dodecahedron onto itself, of the summed L1 distances of corresponding
silhouettes; between two shapes it is the smallest over the 10 x 10 pairs of their light fields.

Our choices where the paper leaves room: silhouettes are rendered near-orthographically at 64 px (the paper: 256 px
scaled down), features are kept as floats rather than quantised to 8 bits, Zernike magnitudes are divided by the
silhouette's pixel count and Fourier magnitudes by the mean radius (scale invariance), and the ten dodecahedron
rotations are a fixed, spread-out set picked from seeded random rotations (farthest-first in vertex directions).
"""

from __future__ import annotations

from functools import lru_cache
from math import factorial
from typing import Tuple

import numpy as np
from skimage import measure

from recon3d.geometry.render import render_view

PHI = (1 + 5 ** 0.5) / 2
ZERNIKE_ORDER = 10
FOURIER_COUNT = 10
SILHOUETTE_PX = 64
LIGHT_FIELDS = 10


def dodecahedron_vertices() -> np.ndarray:
    """(20, 3) unit vectors to the vertices of a regular dodecahedron."""
    a, b = 1 / PHI, PHI
    verts = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    for s in (-1, 1):
        for t in (-1, 1):
            verts += [(0, s * a, t * b), (s * a, t * b, 0), (s * b, 0, t * a)]
    verts = np.array(verts, dtype=np.float64)
    return verts / np.linalg.norm(verts, axis=1, keepdims=True)


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


@lru_cache(maxsize=1)
def view_directions() -> np.ndarray:
    """(10, 3): one vertex of each antipodal pair of the dodecahedron."""
    verts = dodecahedron_vertices()
    keep = []
    for v in verts:
        if not any(np.allclose(v, -k) or np.allclose(v, k) for k in keep):
            keep.append(v)
    return np.array(keep)


@lru_cache(maxsize=1)
def symmetry_permutations() -> np.ndarray:
    """(60, 10) int: for each rotation of the dodecahedron onto itself, where each of the 10 view directions goes
    (as the index of a direction, up to sign)."""
    verts = dodecahedron_vertices()
    face_axis = np.array([0.0, PHI, 1.0])  # through the centre of a pentagonal face (an icosahedron vertex)
    generators = [_axis_angle(face_axis, 2 * np.pi / 5), _axis_angle(np.ones(3), 2 * np.pi / 3)]
    group = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:  # closure of the group under the two generators
        grown = []
        for g in frontier:
            for h in generators:
                m = h @ g
                if not any(np.allclose(m, k, atol=1e-9) for k in group):
                    group.append(m)
                    grown.append(m)
        frontier = grown
    if len(group) != 60:
        raise RuntimeError(f"dodecahedral rotation group has {len(group)} elements, expected 60")
    dirs = view_directions()
    perms = []
    for m in group:
        moved = dirs @ m.T
        similarity = np.abs(moved @ dirs.T)  # +-: opposite directions are the same view
        perms.append(similarity.argmax(axis=1))
        if not np.allclose(np.sort(np.abs(verts @ m.T @ verts.T).max(1)), 1.0):
            raise RuntimeError("a generated rotation does not map the dodecahedron onto itself")
    perms = np.array(perms)
    if len({tuple(p) for p in perms}) < 2 or any(len(set(p)) != len(dirs) for p in perms):
        raise RuntimeError("dodecahedral rotations do not permute the view directions")
    return perms


@lru_cache(maxsize=1)
def light_field_rotations() -> np.ndarray:
    """(10, 3, 3): the identity and 9 rotations spread out so that the camera sets differ as much as possible."""
    rng = np.random.default_rng(2003)
    candidates = []
    for _ in range(400):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        candidates.append(np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]))
    dirs = view_directions()
    chosen = [np.eye(3)]

    def gap(a: np.ndarray, b: np.ndarray) -> float:  # how close the two camera sets come (smaller: more alike)
        return float(np.arccos(np.clip(np.abs((dirs @ a.T) @ (dirs @ b.T).T), 0, 1)).min(axis=1).mean())

    while len(chosen) < LIGHT_FIELDS:
        scores = [min(gap(c, k) for k in chosen) for c in candidates]
        chosen.append(candidates[int(np.argmax(scores))])
    return np.stack(chosen)


def _camera(direction: np.ndarray, distance: float, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Near-orthographic camera on `direction` looking at the origin; the unit sphere fills 90 % of the image."""
    forward = -direction / np.linalg.norm(direction)
    up = np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    extr = np.concatenate([rotation, (-rotation @ (direction * distance))[:, None]], axis=1)
    focal = 0.45 * size * distance
    intr = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    return intr, extr


def silhouettes(vertices: np.ndarray, faces: np.ndarray, size: int = SILHOUETTE_PX) -> np.ndarray:
    """(10 light fields, 10 views, size, size) bool silhouettes of a mesh, centred and scaled into the unit sphere."""
    vertices = np.asarray(vertices, np.float64)
    centre = (vertices.min(0) + vertices.max(0)) / 2
    vertices = vertices - centre
    vertices /= max(np.linalg.norm(vertices, axis=1).max(), 1e-12)
    dirs = view_directions()
    out = np.zeros((LIGHT_FIELDS, len(dirs), size, size), bool)
    for i, rotation in enumerate(light_field_rotations()):
        for j, direction in enumerate(dirs @ rotation.T):
            intr, extr = _camera(direction, 100.0, size)
            out[i, j] = render_view(vertices, faces, intr, extr, size, supersample=1)[..., 3] > 127
    return out


@lru_cache(maxsize=1)
def _zernike_terms() -> Tuple[Tuple[int, int], ...]:
    return tuple((n, m) for n in range(ZERNIKE_ORDER + 1) for m in range(n + 1) if (n - m) % 2 == 0)


def zernike_magnitudes(mask: np.ndarray) -> np.ndarray:
    """(36,) |Z_nm| for n <= 10 of a silhouette mapped onto the unit disk (centroid, farthest pixel at radius 1),
    divided by the pixel count."""
    ys, xs = np.nonzero(mask)
    terms = _zernike_terms()
    if len(xs) == 0:
        return np.zeros(len(terms))
    dx, dy = xs - xs.mean(), ys - ys.mean()
    radius = np.hypot(dx, dy)
    rho = radius / max(radius.max(), 1e-9)
    theta = np.arctan2(dy, dx)
    out = np.empty(len(terms))
    for k, (n, m) in enumerate(terms):
        radial = np.zeros_like(rho)
        for s in range((n - m) // 2 + 1):
            coef = (-1) ** s * factorial(n - s) / (
                factorial(s) * factorial((n + m) // 2 - s) * factorial((n - m) // 2 - s))
            radial += coef * rho ** (n - 2 * s)
        moment = (n + 1) / np.pi * np.sum(radial * np.exp(-1j * m * theta))
        out[k] = abs(moment) / len(xs)
    return out


def fourier_magnitudes(mask: np.ndarray, samples: int = 128) -> np.ndarray:
    """(10,) |F_1..F_10| / |F_0| of the centroid-distance signature of the silhouette's longest outer contour."""
    padded = np.pad(mask.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5)
    if not contours:
        return np.zeros(FOURIER_COUNT)
    contour = max(contours, key=len)
    steps = np.linalg.norm(np.diff(contour, axis=0), axis=1)
    arc = np.concatenate([[0], np.cumsum(steps)])
    if arc[-1] <= 0:
        return np.zeros(FOURIER_COUNT)
    at = np.linspace(0, arc[-1], samples, endpoint=False)
    resampled = np.stack([np.interp(at, arc, contour[:, 0]), np.interp(at, arc, contour[:, 1])], axis=1)
    signature = np.linalg.norm(resampled - resampled.mean(0), axis=1)
    spectrum = np.abs(np.fft.rfft(signature))
    return spectrum[1:FOURIER_COUNT + 1] / max(spectrum[0], 1e-12)


def light_field_descriptor(vertices: np.ndarray, faces: np.ndarray, size: int = SILHOUETTE_PX) -> np.ndarray:
    """(10 light fields, 10 views, 46) features of a mesh: 36 Zernike magnitudes then 10 Fourier descriptors."""
    masks = silhouettes(vertices, faces, size)
    return np.array([[np.concatenate([zernike_magnitudes(m), fourier_magnitudes(m)]) for m in field]
                     for field in masks])


def lfd_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Chen et al.'s distance of two descriptors (10, 10, F): min over light-field pairs and the 60 dodecahedron
    rotations of the summed L1 distances of corresponding silhouettes."""
    cost = np.abs(a[:, None, :, None, :] - b[None, :, None, :, :]).sum(-1)  # (10, 10, view a, view b)
    perms = symmetry_permutations()  # (60, 10)
    views = np.arange(a.shape[1])
    matched = cost[:, :, views[None, :], perms].sum(-1)  # (10, 10, 60)
    return float(matched.min())


def precision_at_1(distances: np.ndarray, categories: list) -> dict:
    """Leave-one-out retrieval: for each shape, is its nearest other shape of the same category? Per category
    (categories with a single shape cannot score and are left out) and the mean over shapes."""
    d = np.array(distances, dtype=np.float64)
    np.fill_diagonal(d, np.inf)
    cats = np.asarray(categories)
    hits = cats[d.argmin(axis=1)] == cats
    out = {}
    scored = []
    for category in sorted(set(categories)):
        members = cats == category
        if members.sum() < 2:
            continue
        out[category] = {"shapes": int(members.sum()), "precision@1": float(hits[members].mean())}
        scored.append(members)
    if scored:
        mask = np.any(scored, axis=0)
        out["mean over shapes"] = {"shapes": int(mask.sum()), "precision@1": float(hits[mask].mean())}
    return out
