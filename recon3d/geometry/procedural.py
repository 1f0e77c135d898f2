"""Procedural shapes built from primitives with random proportions: varied training data with no download.

Every shape is Y-up with its front toward -Z (our canonical frame), made of several overlapping closed bodies, like
many real meshes. The same (category, seed) always gives the same mesh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Sequence

import numpy as np
import trimesh
from trimesh.creation import box, capsule, cone, cylinder, icosphere

from recon3d.files import atomic_path


def _at(mesh: trimesh.Trimesh, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> trimesh.Trimesh:
    mesh.apply_translation((x, y, z))
    return mesh


def _rot(mesh: trimesh.Trimesh, angle: float, axis) -> trimesh.Trimesh:
    mesh.apply_transform(trimesh.transformations.rotation_matrix(angle, axis))
    return mesh


def _legs(rng, width, depth, height, thickness, round_legs):
    legs = []
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * (width / 2 - thickness), sz * (depth / 2 - thickness)
            leg = cylinder(radius=thickness * 0.6, height=height, sections=12) if round_legs else box(
                (thickness, height, thickness))
            if round_legs:
                _rot(leg, np.pi / 2, (1, 0, 0))
            legs.append(_at(leg, x, height / 2, z))
    return legs


def chair(rng: np.random.Generator) -> list:
    w, d = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    seat_h, seat_t = rng.uniform(0.35, 0.5), rng.uniform(0.04, 0.08)
    back_h, leg_t = rng.uniform(0.3, 0.6), rng.uniform(0.03, 0.06)
    parts = _legs(rng, w, d, seat_h, leg_t, rng.random() < 0.4)
    parts.append(_at(box((w, seat_t, d)), 0, seat_h + seat_t / 2, 0))
    back = box((w, back_h, seat_t))
    _rot(back, rng.uniform(-0.25, 0.0), (1, 0, 0))
    parts.append(_at(back, 0, seat_h + seat_t + back_h / 2, d / 2 - seat_t / 2))
    if rng.random() < 0.4:  # armrests
        for sx in (-1, 1):
            parts.append(_at(box((leg_t, leg_t, d)), sx * (w / 2 - leg_t / 2), seat_h + 0.2, 0))
    return parts


def table(rng: np.random.Generator) -> list:
    w, d = rng.uniform(0.6, 1.0), rng.uniform(0.4, 0.8)
    h, top_t, leg_t = rng.uniform(0.4, 0.7), rng.uniform(0.03, 0.07), rng.uniform(0.04, 0.08)
    if rng.random() < 0.3:  # pedestal table
        top = _rot(cylinder(radius=w / 2, height=top_t, sections=32), np.pi / 2, (1, 0, 0))
        stem = _rot(cylinder(radius=leg_t, height=h, sections=12), np.pi / 2, (1, 0, 0))
        base = _rot(cylinder(radius=w / 4, height=top_t, sections=24), np.pi / 2, (1, 0, 0))
        return [_at(top, 0, h + top_t / 2, 0), _at(stem, 0, h / 2, 0), _at(base, 0, top_t / 2, 0)]
    return _legs(rng, w, d, h, leg_t, rng.random() < 0.5) + [_at(box((w, top_t, d)), 0, h + top_t / 2, 0)]


def lamp(rng: np.random.Generator) -> list:
    base_r, pole_h = rng.uniform(0.1, 0.2), rng.uniform(0.5, 0.9)
    shade_r, shade_h = rng.uniform(0.12, 0.25), rng.uniform(0.12, 0.25)
    base = _rot(cylinder(radius=base_r, height=0.04, sections=24), np.pi / 2, (1, 0, 0))
    pole = _rot(cylinder(radius=0.015, height=pole_h, sections=10), np.pi / 2, (1, 0, 0))
    shade = _rot(cone(radius=shade_r, height=shade_h, sections=24), -np.pi / 2, (1, 0, 0))
    return [_at(base, 0, 0.02, 0), _at(pole, 0, pole_h / 2, 0), _at(shade, 0, pole_h + shade_h * 0.6, 0)]


def airplane(rng: np.random.Generator) -> list:
    length, radius = rng.uniform(0.8, 1.1), rng.uniform(0.05, 0.09)
    span, chord = rng.uniform(0.7, 1.1), rng.uniform(0.12, 0.22)
    body = capsule(height=length - 2 * radius, radius=radius, count=(12, 12))  # along Z: nose toward -Z
    wing = _rot(box((span, 0.02, chord)), rng.uniform(-0.3, 0.3), (0, 1, 0))
    tail = box((span * 0.35, 0.015, chord * 0.6))
    fin = box((0.015, chord * 0.9, chord * 0.6))
    return [body, _at(wing, 0, 0, -0.02), _at(tail, 0, 0, length * 0.42),
            _at(fin, 0, chord * 0.45, length * 0.42)]


def car(rng: np.random.Generator) -> list:
    length, width, height = rng.uniform(0.8, 1.1), rng.uniform(0.35, 0.5), rng.uniform(0.15, 0.25)
    wheel_r = rng.uniform(0.06, 0.1)
    body = _at(box((width, height, length)), 0, wheel_r + height / 2, 0)
    cabin_l = length * rng.uniform(0.35, 0.6)
    cabin = _at(box((width * 0.85, height * 0.8, cabin_l)), 0, wheel_r + height * 1.4, rng.uniform(-0.05, 0.1))
    parts = [body, cabin]
    for sx in (-1, 1):
        for sz in (-1, 1):
            wheel = _rot(cylinder(radius=wheel_r, height=0.06, sections=20), np.pi / 2, (0, 1, 0))
            parts.append(_at(wheel, sx * width / 2, wheel_r, sz * length * 0.32))
    return parts


def mug(rng: np.random.Generator) -> list:
    r, h = rng.uniform(0.15, 0.25), rng.uniform(0.3, 0.5)
    body = _rot(cylinder(radius=r, height=h, sections=32), np.pi / 2, (1, 0, 0))
    handle = trimesh.creation.torus(major_radius=h * 0.25, minor_radius=0.025, major_sections=24, minor_sections=8)
    _rot(handle, np.pi / 2, (1, 0, 0))
    _rot(handle, np.pi / 2, (0, 1, 0))
    return [_at(body, 0, h / 2, 0), _at(handle, r, h / 2, 0)]


def ball(rng: np.random.Generator) -> list:
    mesh = icosphere(subdivisions=3, radius=0.5)
    mesh.apply_scale(rng.uniform(0.6, 1.0, size=3))
    return [mesh]


CATEGORIES: Dict[str, Callable[[np.random.Generator], list]] = {
    "chair": chair, "table": table, "lamp": lamp, "airplane": airplane, "car": car, "mug": mug, "ball": ball,
}


def make_shape(category: str, seed: int) -> trimesh.Trimesh:
    """One procedural mesh of `category` (see CATEGORIES); deterministic for (category, seed).

    Raises:
        ValueError: unknown category.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown procedural category {category!r}; choose from {sorted(CATEGORIES)}")
    rng = np.random.default_rng([seed, sorted(CATEGORIES).index(category)])
    return trimesh.util.concatenate(CATEGORIES[category](rng))


def write_procedural_meshes(out: Path, categories: Sequence[str], per_category: int) -> int:
    """Write `per_category` procedural meshes per category as OBJ under out/<category>/; returns files written."""
    written = 0
    for category in categories:
        folder = out / category
        folder.mkdir(parents=True, exist_ok=True)
        for seed in range(per_category):
            path = folder / f"{category}_{seed:03d}.obj"
            if path.exists():
                continue
            with atomic_path(path) as tmp:
                make_shape(category, seed).export(tmp, file_type="obj")
            written += 1
    return written
