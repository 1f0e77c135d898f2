"""`recon3d reconstruct`: photos or renders -> meshes, through any checkpoint whose stage can make a mesh from one
image (an image encoder with its autoencoder, or a VRN)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Sequence

import torch

from recon3d.inference.outputs import save_mesh, save_png, write_pairs
from recon3d.inference.photo import FILL, prepare_photo
from recon3d.inference.protocol import MeshMaker
from recon3d.stages import STAGES
from recon3d.tasks.checkpoints import read_checkpoint, stage_of


def _unique_names(paths: Sequence[Path]) -> List[str]:
    names, seen = [], set()
    for i, path in enumerate(paths):
        name = path.stem if path.stem not in seen else f"{path.stem}_{i}"
        seen.add(name)
        names.append(name)
    return names


@torch.no_grad()
def reconstruct_images(ckpt: str | Path, images: Sequence[str | Path], out_dir: str | Path, *,
                       resolution: int = 128, fmt: str = "obj", fill: float = FILL, device: str = "cpu",
                       model: str = "") -> List[dict]:
    """One mesh per readable image (and its framed input as <name>.input.png); an unusable image is reported on
    stderr with the reason and skipped. The checkpoint's stage decides how (svr: image encoder + autoencoder,
    extracted at `resolution`; vrn: the view-aligned volume, in the camera's frame with y up); `model`, when given,
    must name that stage. Rows: name, path (or error), faces, input view, mesh.

    Raises:
        ValueError: the checkpoint's stage cannot make a mesh from an image, or is not `model`.
    """
    row = stage_of(read_checkpoint(ckpt), str(ckpt))
    if model and model != row.name:
        raise ValueError(f"{ckpt}: the {row.name} stage's checkpoint, not {model}'s")
    inference = row.inference_module()
    if not isinstance(inference, MeshMaker):
        makers = [name for name, other in STAGES.items() if isinstance(other.inference_module(), MeshMaker)]
        raise ValueError(f"{ckpt}: the {row.name} stage's checkpoint makes no mesh from an image; reconstruct "
                         f"needs a checkpoint of {' or '.join(makers)}")
    size, make_mesh = inference.mesh_maker(ckpt, resolution, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in images]
    rows = []
    for path, name in zip(paths, _unique_names(paths)):
        try:
            view = prepare_photo(path, size, fill)
        except (ValueError, FileNotFoundError) as err:
            print(f"recon3d: skipped {err}", file=sys.stderr)
            rows.append({"name": name, "error": str(err)})
            continue
        save_png(out / f"{name}.input.png", view)
        verts, faces = make_mesh(view)
        path_out = save_mesh(out / f"{name}.{fmt}", verts, faces)
        if not len(faces):
            print(f"recon3d: {path_out} has no faces: the predicted shape is empty (its occupancy stays below 0.5 "
                  "everywhere, as a barely trained model's may)", file=sys.stderr)
        rows.append({"name": name, "path": str(path_out), "faces": len(faces), "view": view, "mesh": (verts, faces)})
    return rows


def write_photo_sheet(path: Path, rows: List[dict], size: int = 128) -> Path:
    """One line per reconstructed image: the framed input beside a render of its mesh.

    Raises:
        ValueError: no image could be reconstructed.
    """
    lefts = {row["name"]: row["view"] for row in rows if "view" in row}
    try:
        return write_pairs(path, rows, lefts, size)
    except ValueError:
        raise ValueError("no image could be reconstructed") from None
