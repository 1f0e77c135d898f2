"""A headless CPU renderer: a z-buffer rasteriser compiled with numba, flat two-sided Lambertian shading.

Chosen for a cluster node: deterministic, pip-only, no display or GL library (`recon3d bench prep` prints its
seconds per mesh beside the other steps of preparing a sample). Flat normals with two-sided lighting
because real meshes carry back-to-back duplicate faces and inconsistent winding, where smooth normals cancel out.
"""

from __future__ import annotations

import numba
import numpy as np

from recon3d.geometry.camera import Views, make_views


@numba.njit(cache=True, nogil=True)
def _rasterise(xy, inv_depth, faces, shade, width, zbuf, image, slack):  # pragma: no cover - compiled
    """Fill `image` (H, W) with per-face `shade` where the face is nearest (largest 1/z wins).

    slack 0 samples pixel centres; slack 0.5 is conservative: a pixel counts when the triangle touches its square
    (each edge function tested at the pixel corner where it is largest).
    """
    height = zbuf.shape[0]
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        if inv_depth[a] <= 0.0 or inv_depth[b] <= 0.0 or inv_depth[c] <= 0.0:
            continue  # behind the camera: our cameras never see such faces, skip rather than clip
        x0, y0 = xy[a, 0], xy[a, 1]
        x1, y1 = xy[b, 0], xy[b, 1]
        x2, y2 = xy[c, 0], xy[c, 1]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0.0:
            continue
        xmin = max(int(np.floor(min(x0, x1, x2))), 0)
        xmax = min(int(np.ceil(max(x0, x1, x2))), width - 1)
        ymin = max(int(np.floor(min(y0, y1, y2))), 0)
        ymax = min(int(np.ceil(max(y0, y1, y2))), height - 1)
        # d(w_i)/dx and d(w_i)/dy: how far each barycentric can rise within half a pixel
        g0 = slack * (abs(y1 - y2) + abs(x2 - x1)) / abs(area)
        g1 = slack * (abs(y2 - y0) + abs(x0 - x2)) / abs(area)
        g2 = slack * (abs(y0 - y1) + abs(x1 - x0)) / abs(area)
        for py in range(ymin, ymax + 1):
            cy = py + 0.5
            for px in range(xmin, xmax + 1):
                cx = px + 0.5
                w0 = ((x1 - cx) * (y2 - cy) - (x2 - cx) * (y1 - cy)) / area
                w1 = ((x2 - cx) * (y0 - cy) - (x0 - cx) * (y2 - cy)) / area
                w2 = 1.0 - w0 - w1
                if w0 + g0 < 0.0 or w1 + g1 < 0.0 or w2 + g2 < 0.0:
                    continue
                z = w0 * inv_depth[a] + w1 * inv_depth[b] + w2 * inv_depth[c]
                if z > zbuf[py, px]:
                    zbuf[py, px] = z
                    image[py, px] = shade[f]


def face_shading(vertices: np.ndarray, faces: np.ndarray, light: np.ndarray, ambient: float) -> np.ndarray:
    """(M,) brightness in [ambient, 1]: two-sided Lambertian with a point light at `light` (3,)."""
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-20)
    to_light = light - tri.mean(axis=1)
    to_light /= np.maximum(np.linalg.norm(to_light, axis=1, keepdims=True), 1e-20)
    return ambient + (1.0 - ambient) * np.abs((normal * to_light).sum(1))


def render_view(vertices: np.ndarray, faces: np.ndarray, intr: np.ndarray, extr: np.ndarray, size: int, *,
                supersample: int = 2, color=(0.72, 0.72, 0.75), ambient: float = 0.25,
                light_offset=(0.3, 0.6, 0.0)) -> np.ndarray:
    """Render one view to a (size, size, 4) uint8 RGBA image, transparent background, alpha = pixel coverage.

    Args:
        vertices: (N, 3) float world coordinates; faces: (M, 3) int.
        intr: (3, 3) K for a `size`-pixel image; extr: (3, 4) world-to-camera [R | t] (OpenCV axes).
        supersample: render at supersample x size and average blocks (anti-aliasing).
        light_offset: light position relative to the camera, in the camera's right/up/forward axes.

    Raises:
        ValueError: wrong array shapes.
    """
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"expected vertices (N, 3) and faces (M, 3), got {vertices.shape} and {faces.shape}")
    if intr.shape != (3, 3) or extr.shape != (3, 4):
        raise ValueError(f"expected K (3, 3) and [R|t] (3, 4), got {intr.shape} and {extr.shape}")
    s = int(supersample)
    rot, trans = extr[:, :3], extr[:, 3]
    cam = vertices @ rot.T + trans
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_depth = np.where(cam[:, 2] > 1e-9, 1.0 / cam[:, 2], -1.0)
        xy = (cam[:, :2] * inv_depth[:, None]) * np.array([intr[0, 0], intr[1, 1]]) + intr[:2, 2]
    xy = np.ascontiguousarray(xy * s)
    eye = -rot.T @ trans
    offset = np.asarray(light_offset, dtype=np.float64)
    light = eye + rot.T @ np.array([offset[0], -offset[1], offset[2]])  # camera y points down
    shade = face_shading(vertices, faces, light, ambient)
    faces64 = np.ascontiguousarray(faces, dtype=np.int64)
    zbuf = np.zeros((size * s, size * s))
    image = np.full((size * s, size * s), -1.0)
    _rasterise(xy, inv_depth, faces64, shade, size * s, zbuf, image, 0.0)
    covered = (image >= 0).reshape(size, s, size, s)
    value = np.where(image >= 0, image, 0.0).reshape(size, s, size, s).sum(axis=(1, 3))
    count = covered.sum(axis=(1, 3))
    alpha = count / float(s * s)
    mean_shade = value / np.maximum(count, 1)
    # Geometry thinner than the sample spacing can fall between samples: a conservative pass at the image's own
    # resolution gives every pixel that the geometry touches at least the smallest visible alpha, so the mask
    # holds the whole silhouette (as a renderer's reconstruction filter would).
    touched_z = np.zeros((size, size))
    touched = np.full((size, size), -1.0)
    _rasterise(np.ascontiguousarray(xy / s), inv_depth, faces64, shade, size, touched_z, touched, 0.5)
    missed = (count == 0) & (touched >= 0)
    alpha = np.where(missed, 1.0 / 255.0, alpha)
    mean_shade = np.where(missed, touched, mean_shade)
    rgb = mean_shade[..., None] * np.asarray(color, dtype=np.float64)
    out = np.concatenate([rgb, alpha[..., None]], axis=-1)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def render_views(vertices: np.ndarray, faces: np.ndarray, views: Views, **kwargs) -> np.ndarray:
    """(V, size, size, 4) uint8 RGBA renders for every camera in `views` (keyword arguments as render_view)."""
    size = int(round(views.intrinsics[0, 0, 2] * 2)) if len(views) else 0
    return np.stack([render_view(vertices, faces, views.intrinsics[i], views.extrinsics[i], size, **kwargs)
                     for i in range(len(views))]) if len(views) else np.zeros((0, size, size, 4), np.uint8)


def on_white(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: an RGBA, RGB or grayscale image composited over a white background."""
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.shape[-1] == 4:
        alpha = img[..., 3:] / 255.0
        img = img[..., :3] * alpha + 255.0 * (1 - alpha)
    return img[..., :3].astype(np.uint8)


def render_preview(vertices: np.ndarray, faces: np.ndarray, size: int = 128, azimuth: float = 225.0,
                   elevation: float = 25.0) -> np.ndarray:
    """(size, size, 3) uint8: a mesh in the unit cube seen from a fixed 3/4 view, on white (for logs and sheets)."""
    if len(faces) == 0:
        return np.full((size, size, 3), 255, np.uint8)
    views = make_views([azimuth], [elevation], [1.8], 1.25 * size, size)
    return on_white(render_view(np.asarray(vertices, np.float64), np.asarray(faces), views.intrinsics[0],
                                views.extrinsics[0], size, supersample=2))
