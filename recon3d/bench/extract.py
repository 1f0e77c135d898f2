"""`recon3d bench extract`: coarse-to-fine extraction against dense evaluation and IM-NET's own algorithm, on the
same decoder and codes, with points evaluated and the occupancy agreement with dense fp32.

IM-NET's algorithm (its improved code's mesh extraction, as published): the field at the centres of a 64^3 frame,
in batches of 32^3 points; a queue of the frame cells whose 3^3 neighbourhood holds both inside and outside; each
queued cell evaluated at its 4^3 fine centres (256^3 in all), batched 512 cells (32^3 points) per decoder call;
frame cells inside everywhere filled, the rest outside. Timed here with its Python loops vectorised in numpy (the
points and decoder calls are the algorithm's; its loops would only add time), in fp32 as its code runs.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Callable, List

import numpy as np
import torch

from recon3d.data.loading.datamodule import iter_split
from recon3d.geometry.extract import coarse_to_fine_grid, coarse_to_fine_grids, dense_grid, grid_to_mesh
from recon3d.geometry.marching import corner_grid_mesh
from recon3d.geometry.voxelize import iou
from recon3d.inference.autoencoder import decoder_field, decoder_fields, load_autoencoder
from recon3d.models.implicit_decoder import ImplicitDecoder
from recon3d.tasks.decoding import inference_dtype

Field = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def imnet_reference_grid(field: Field, frame: int = 64, cell: int = 4, batch_points: int = 32768,
                         threshold: float = 0.5, device="cpu") -> tuple:
    """(values (R, R, R) float32 at fine-cell centres, R = frame * cell; points evaluated) by IM-NET's algorithm."""
    res = frame * cell
    axis = (torch.arange(frame, device=device, dtype=torch.float32) + 0.5) / frame - 0.5
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    inside = torch.cat([field(centres[i:i + batch_points]).float() > threshold
                        for i in range(0, len(centres), batch_points)]).reshape(frame, frame, frame).cpu().numpy()
    padded = np.pad(inside, 1, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3, 3))
    mixed = windows.max(axis=(-3, -2, -1)) != windows.min(axis=(-3, -2, -1))
    values = np.repeat(np.repeat(np.repeat(inside.astype(np.float32), cell, 0), cell, 1), cell, 2)
    queue = np.argwhere(mixed)
    offsets = np.stack(np.meshgrid(*[np.arange(cell)] * 3, indexing="ij"), -1).reshape(-1, 3)
    per_call = max(1, batch_points // cell ** 3)
    for start in range(0, len(queue), per_call):
        cells = queue[start:start + per_call]
        fine = (cells[:, None, :] * cell + offsets[None]).reshape(-1, 3)
        points = torch.as_tensor((fine + 0.5) / res - 0.5, dtype=torch.float32, device=device)
        out = field(points).float().cpu().numpy()
        values[fine[:, 0], fine[:, 1], fine[:, 2]] = out
    return values, len(centres) + len(queue) * cell ** 3


class _Shadowed(torch.nn.Module):
    """A decoder that also runs a full-size decoder (random weights) on every batch it is given, in the same
    precision, and returns its own values: extraction then evaluates the points a trained decoder's surface asks
    for, at the full-size decoder's cost (an upper bound: both decoders' time is counted)."""

    def __init__(self, decoder: torch.nn.Module, device: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.decoder, self.shadow = decoder, ImplicitDecoder().to(device).eval()
        self.code = torch.full((1, self.shadow.latent_dim), 0.5, device=device)

    def forward(self, points: torch.Tensor, z: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        self.shadow(points, self.code.expand(len(points), -1))
        return self.decoder(points, z, shape)


def _full_size(task, device: str):
    return SimpleNamespace(model=SimpleNamespace(decoder=_Shadowed(task.model.decoder, device)))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _codes(task, shard_dir: str, shapes: int, device: str) -> List[torch.Tensor]:
    codes: List[torch.Tensor] = []
    for split in ("test", "val", "train"):
        for batch in iter_split(shard_dir, split, 8):
            with torch.no_grad():
                codes += list(task.model.encoder(batch["voxels"].to(device)))
            if len(codes) >= shapes:
                return codes[:shapes]
    return codes


def measure_extraction(ckpt: str, shard_dir: str, shapes: int, resolution: int, device: str, *,
                       reference: bool = True, dense: bool = True, full_size: bool = False, dtype=None,
                       batch: int = 0) -> dict:
    """Per method, the median ms per shape and points evaluated: coarse-to-fine in the inference precision (bf16
    where the device runs it natively), dense in fp32 (the reference grid) and IM-NET's algorithm in fp32 (only at
    resolution 256, its frame 64 x cell 4); the occupancy IoU of coarse-to-fine against dense fp32. full_size: also
    both algorithms at a full-size decoder's cost (z 256, 1024-1024-1024-512-256-128; see _Shadowed). The batched
    rows (_batched) extract `batch` codes at once (0: the same `shapes`; the shards' shapes repeat if too few)."""
    task = load_autoencoder(ckpt, device)
    dtype = dtype or inference_dtype(device)
    everything = _codes(task, shard_dir, max(shapes, batch), device)
    if not everything:
        raise ValueError(f"{shard_dir}: no shapes to extract")
    codes = everything[:shapes]
    batched = [everything[i % len(everything)] for i in range(batch or len(codes))]
    rows = {"coarse_to_fine": [], "dense_fp32": [], "imnet_reference_fp32": [], "coarse_to_fine_full_size": [],
            "imnet_reference_fp32_full_size": []}  # per shape (seconds, points evaluated)
    shadow = _full_size(task, device) if full_size else None
    agreement = []
    for z in codes:
        fast, seconds = _timed(lambda: coarse_to_fine_grid(decoder_field(task, z, dtype), resolution, device=device))
        rows["coarse_to_fine"].append((seconds, fast.evaluated))
        if dense:
            exact, seconds = _timed(lambda: dense_grid(decoder_field(task, z, torch.float32), resolution,
                                                       device=device))
            rows["dense_fp32"].append((seconds, exact.evaluated))
            agreement.append(float(iou(fast.values > 0.5, exact.values > 0.5)))
        if reference and resolution == 256:
            (_, points), seconds = _timed(lambda: imnet_reference_grid(decoder_field(task, z, torch.float32),
                                                                       device=device))
            rows["imnet_reference_fp32"].append((seconds, points))
        if shadow is not None:
            grid, seconds = _timed(lambda: coarse_to_fine_grid(decoder_field(shadow, z, dtype), resolution,
                                                               device=device))
            rows["coarse_to_fine_full_size"].append((seconds, grid.evaluated))
            if resolution == 256:
                (_, points), seconds = _timed(lambda: imnet_reference_grid(
                    decoder_field(shadow, z, torch.float32), device=device))
                rows["imnet_reference_fp32_full_size"].append((seconds, points))
    rows.update(_batched(task, batched, resolution, dtype, device))
    methods = {name: {"ms": round(statistics.median(s for s, _ in row) * 1000, 2),
                      "points": int(statistics.median(p for _, p in row))} for name, row in rows.items() if row}
    batched_ms = methods["coarse_to_fine_batched"]["ms"]
    return {"shapes": len(codes), "batch": len(batched), "batched_shapes_per_s": round(1000 / batched_ms, 1),
            "resolution": resolution, "device": device,
            "coarse_to_fine_dtype": str(dtype).replace("torch.", ""), "methods": methods,
            "iou_vs_dense_fp32_min": round(min(agreement), 5) if agreement else None,
            "decoder_widths": list(task.hparams.get("decoder_widths", []))}


def _batched(task, codes: List[torch.Tensor], resolution: int, dtype, device: str) -> dict:
    """Rows (seconds per shape, points) of coarse-to-fine over all codes at once, of marching cubes on those grids
    (recon3d's on the grid's device, and scikit-image's on the CPU) and of a mesh end to end (batched grids and
    recon3d's marching cubes: vertices and faces in memory, as extract_many makes them)."""
    start = time.perf_counter()
    grids = coarse_to_fine_grids(decoder_fields(task, torch.stack(codes), dtype), len(codes), resolution,
                                 device=device, on_device=True)
    per_shape = (time.perf_counter() - start) / len(codes)
    ours = [_timed(lambda: corner_grid_mesh(grid.values))[1] for grid in grids]
    theirs = [_timed(lambda: grid_to_mesh(grid.values.cpu().numpy()))[1] for grid in grids]
    return {"coarse_to_fine_batched": [(per_shape, grid.evaluated) for grid in grids],
            "marching_cubes": [(seconds, 0) for seconds in ours],
            "marching_cubes_skimage": [(seconds, 0) for seconds in theirs],
            "mesh_end_to_end_batched": [(per_shape + seconds, grid.evaluated) for grid, seconds in zip(grids, ours)]}


BASELINE_OF = {"dense_fp32": "coarse_to_fine", "imnet_reference_fp32": "coarse_to_fine",
               "coarse_to_fine_batched": "coarse_to_fine", "imnet_reference_fp32_full_size": "coarse_to_fine_full_size",
               "marching_cubes_skimage": "marching_cubes"}  # the rows printed as a multiple of another


def bench_extract(ckpt: str, shard_dir: str, shapes: int, resolution: int, device: str, dtype=None,
                  full_size: bool = False) -> str:
    """measure_extraction, printed: ms per shape, points, ratios to coarse-to-fine (at the same decoder's cost)."""
    result = measure_extraction(ckpt, shard_dir, shapes, resolution, device, dtype=dtype, full_size=full_size)
    methods = result["methods"]
    lines = [f"extraction benchmark on {device}: {result['shapes']} shapes at {resolution}^3, decoder "
             f"{result['decoder_widths']} (median per shape; coarse-to-fine in {result['coarse_to_fine_dtype']})"]
    labels = {"coarse_to_fine": "coarse-to-fine", "coarse_to_fine_batched": "coarse-to-fine, all at once",
              "marching_cubes": "marching cubes", "marching_cubes_skimage": "marching cubes, skimage",
              "mesh_end_to_end_batched": "mesh end to end, batched",
              "dense_fp32": "dense grid, fp32",
              "imnet_reference_fp32": "IM-NET frame+queue, fp32",
              "coarse_to_fine_full_size": "coarse-to-fine, full-size", "imnet_reference_fp32_full_size":
              "IM-NET, fp32, full-size"}
    for name, row in methods.items():
        ours = methods.get(BASELINE_OF.get(name, ""))
        ratio = f"  {row['ms'] / ours['ms']:.1f}x our time" if ours else ""
        lines.append(f"  {labels[name]:<26} {row['ms'] / 1000:8.2f} s  {row['points']:>10,} points{ratio}")
    if result["iou_vs_dense_fp32_min"] is not None:
        lines.append(f"  occupancy IoU of coarse-to-fine against dense fp32: min {result['iou_vs_dense_fp32_min']:.4f}")
    if full_size:
        lines.append("  full-size: the same points at the cost of a z 256, 1024-1024-1024-512-256-128 decoder (random "
                     "weights run beside this checkpoint's; both counted)")
    return "\n".join(lines)
