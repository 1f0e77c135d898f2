"""Codes to shapes at validation and evaluation time: an implicit decoder evaluated on a grid (in bf16 where the
hardware runs it natively, the values near the surface again in fp32), and the surfaces of decoded grids."""

from __future__ import annotations

import os
from typing import Tuple

import torch

from recon3d.geometry.extract import grid_to_mesh
from recon3d.geometry.metrics import sample_surface
from recon3d.hardware import native_bf16


def cell_centres(resolution: int, device=None) -> torch.Tensor:
    """(R^3, 3) centres (i + 0.5) / R - 0.5 of a resolution^3 grid, x-major like the stored voxels."""
    axis = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution - 0.5
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def inference_dtype(device) -> torch.dtype:
    """The decoder's precision for extraction and evaluation on `device`: bf16 autocast where the hardware runs bf16
    natively (a CUDA device that supports it; a CPU with avx512_bf16/AMX/Arm bf16), else fp32.
    RECON3D_INFERENCE_DTYPE=fp32 or bf16 overrides."""
    forced = os.environ.get("RECON3D_INFERENCE_DTYPE", "").lower()
    if forced in ("fp32", "float32", "bf16", "bfloat16"):
        return torch.bfloat16 if forced.startswith("bf") else torch.float32
    return torch.bfloat16 if native_bf16(torch.device(device).type) else torch.float32


def refine_in_fp32(values: torch.Tensor, points: torch.Tensor, run, threshold: float = 0.5,
                   margin: float = 0.01, *per_point: torch.Tensor) -> torch.Tensor:
    """values (P,) of a bf16 pass over points (P, 3), with those within `margin` of `threshold` replaced in place by
    run(their points, their rows of each `per_point` tensor), an fp32 evaluation: bf16 moves a decoder's values by a
    few hundredths, enough to flip cells near the surface and nowhere else."""
    near = ((values - threshold).abs() < margin).nonzero()[:, 0]
    if len(near):
        values[near] = run(points[near], *(extra[near] for extra in per_point))
    return values


@torch.no_grad()
def decode_occupancy(decoder, z: torch.Tensor, resolution: int, chunk: int = 0, dtype: torch.dtype | None = None,
                     margin: float = 0.01) -> torch.Tensor:
    """Occupancy (B, R, R, R) of codes z (B, Z) at the cell centres of a resolution^3 grid.

    Each decoder call takes at most `chunk` points over all codes (0: 8192 on a CPU, 2^19 on a GPU), so that the
    decoder's per-point activations stay in cache instead of paging through a GB (docs/results.md, evaluation).

    dtype bfloat16 decodes under bf16 autocast and evaluates again in fp32 the points within `margin` of 0.5 (as
    extraction does, inference.autoencoder.decoder_field). None: the precision of the caller's context.
    """
    if dtype == torch.bfloat16:
        with torch.autocast(z.device.type, dtype=torch.bfloat16):
            values = decode_occupancy(decoder, z, resolution, chunk).float()
        points = cell_centres(resolution, z.device)
        flat = values.reshape(len(z), -1)
        with torch.autocast(z.device.type, enabled=False):
            for b in range(len(z)):  # the few points near the surface, one code at a time
                refine_in_fp32(flat[b], points, lambda p: decoder(p[None], z[b:b + 1].float())[0, :, 0].float(),
                               margin=margin)
        return values
    chunk = chunk or (8192 if z.device.type == "cpu" else 1 << 19)
    points = cell_centres(resolution, z.device).to(z.dtype)  # bf16 codes under DeepSpeed's bf16
    per_call = min(len(points), chunk)
    codes = max(1, chunk // per_call)  # codes per call when a whole grid fits in one
    out = []
    for first in range(0, z.shape[0], codes):
        group = z[first:first + codes]
        out.append(torch.cat([decoder(points[start:start + per_call].expand(group.shape[0], -1, -1), group)[..., 0]
                              for start in range(0, len(points), per_call)], dim=1))
    return torch.cat(out).reshape(z.shape[0], resolution, resolution, resolution)


def decoded_surfaces(decoder, z: torch.Tensor, resolution: int, points: int, rng,
                     dtype: torch.dtype | None = None) -> Tuple[list, list]:
    """Each code's shape decoded on a resolution^3 grid (in `dtype`, see decode_occupancy): its (vertices, faces) by
    marching cubes at 0.5, and `points` samples of its surface (None for an empty shape). What the GAN's validation
    and its test evaluation compare."""
    grids = decode_occupancy(decoder, z, resolution, dtype=dtype).float().cpu().numpy()
    meshes = [grid_to_mesh(grid, 0.5, corners=False) for grid in grids]
    return meshes, [sample_surface(v, f, points, rng)[0] if len(f) else None for v, f in meshes]
