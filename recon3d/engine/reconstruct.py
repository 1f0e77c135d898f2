"""`recon3d reconstruct`: photos or renders -> meshes, through a trained image encoder and its autoencoder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

from recon3d.data.photo import FILL, prepare_photo


def load_svr(ckpt: str | Path, device: str = "cpu"):
    """(image-encoder task, autoencoder task) of an SVR checkpoint (which names its autoencoder)."""
    import recon3d.engine.build  # noqa: F401  (registers the config classes as safe globals)
    from recon3d.engine.inference import load_task
    from recon3d.tasks.svr import SVRTask

    hparams = torch.load(str(ckpt), map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if "architecture" not in hparams:
        raise ValueError(f"{ckpt}: not an image-encoder checkpoint (train.stage=svr)")
    svr = SVRTask.load_from_checkpoint(str(ckpt), map_location=device, weights_only=True).eval()
    return svr, load_task(hparams["autoencoder_ckpt"], device)


def encoder_input(view: np.ndarray, channels: int, crop: int) -> torch.Tensor:
    """(1, C, crop, crop) float tensor from an (S, S, 3) uint8 view on white, centre-cropped as in evaluation."""
    from recon3d.data.pipelines import to_float_image

    image = to_float_image(view, grayscale=channels == 1)
    height, width = image.shape[1:]
    y0, x0 = (height - crop) // 2, (width - crop) // 2
    return torch.as_tensor(np.ascontiguousarray(image[:, y0:y0 + crop, x0:x0 + crop]))[None]


def _unique_names(paths: Sequence[Path]) -> List[str]:
    names, seen = [], set()
    for i, path in enumerate(paths):
        name = path.stem if path.stem not in seen else f"{path.stem}_{i}"
        seen.add(name)
        names.append(name)
    return names


def _mesh_maker(ckpt: str | Path, model: str, resolution: int, device: str):
    """(image size, view -> (vertices, faces)) for an SVR or a VRN checkpoint."""
    if model == "vrn":
        from recon3d.engine.view_models import load_view_task, vrn_mesh

        task = load_view_task(ckpt, "vrn", device)
        size, crop, channels = int(task.hparams.image_size), int(task.hparams.crop_size), task.hparams.image_channels
        return size, lambda view: vrn_mesh(task, encoder_input(view, channels, crop).to(device))
    if model != "svr":
        raise ValueError(f"model {model!r}: svr or vrn")
    from recon3d.engine.inference import extract_mesh

    svr, autoencoder = load_svr(ckpt, device)
    size, crop = int(svr.hparams.get("image_size", 137)), int(svr.hparams.get("crop_size", 128))
    channels = int(svr.hparams.image_channels)

    def make(view):
        z = svr.encoder(encoder_input(view, channels, crop).to(device))[0]
        return extract_mesh(autoencoder, z, resolution)[:2]

    return size, make


@torch.no_grad()
def reconstruct_images(ckpt: str | Path, images: Sequence[str | Path], out_dir: str | Path, *,
                       resolution: int = 128, fmt: str = "obj", fill: float = FILL, device: str = "cpu",
                       model: str = "svr") -> List[dict]:
    """One mesh per readable image (and its framed input as <name>.input.png); an unusable image is reported on
    stderr with the reason and skipped. model: svr (image encoder + autoencoder, extracted at `resolution`) or vrn
    (the view-aligned volume, in the camera's frame with y up). Rows: name, path (or error), faces, input view,
    mesh."""
    from PIL import Image

    from recon3d.engine.inference import save_mesh

    size, make_mesh = _mesh_maker(ckpt, model, resolution, device)
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
        Image.fromarray(view).save(out / f"{name}.input.png")
        verts, faces = make_mesh(view)
        path_out = save_mesh(out / f"{name}.{fmt}", verts, faces)
        rows.append({"name": name, "path": str(path_out), "faces": len(faces), "view": view, "mesh": (verts, faces)})
    return rows


def write_photo_sheet(path: Path, rows: List[dict], size: int = 128) -> Path:
    """One line per reconstructed image: the framed input beside a render of its mesh."""
    from PIL import Image

    from recon3d.geometry.render import render_preview

    lines = []
    for row in rows:
        if "mesh" not in row:
            continue
        left = np.asarray(Image.fromarray(row["view"]).resize((size, size), Image.Resampling.BILINEAR))
        lines.append(np.concatenate([left, render_preview(*row["mesh"], size)], axis=1))
    if not lines:
        raise ValueError("no image could be reconstructed")
    Image.fromarray(np.concatenate(lines, axis=0)).save(path)
    return path
