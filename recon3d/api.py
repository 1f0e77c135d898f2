"""recon3d from Python: `recon3d.load(path)` and what a loaded model does, without the command line.

    import recon3d

    svr = recon3d.load("runs/demo/svr")            # a checkpoint file, a run folder or a DeepSpeed folder
    mesh = svr.reconstruct("chair.png")            # a trimesh.Trimesh (a path, a PIL image or uint8 pixels)
    z = svr.encode("chair.png")                    # the code the image encoder predicts, (Z,) float32
    same = svr.decode(z)                           # decoded by the autoencoder the checkpoint carries

    gan = recon3d.load("runs/demo/gan")
    shapes = gan.generate(4, seed=0)               # the same seed gives the same shapes
    line = gan.interpolate(0, 5, steps=5)          # between two samples (seeds), or two codes, or two images (svr)

What a model can do follows its stage: encode/decode for the autoencoder (voxels -> code -> mesh), the image encoder
(image -> code -> mesh) and the latent GAN (its autoencoder's decoder); reconstruct for the image encoder and VRN
(its mesh is in the camera's frame, y up); generate for the GAN. Meshes are extracted coarse-to-fine at `resolution`
cells per edge, in the [-0.5, 0.5]^3 cube of the training shapes. An export folder (`recon3d export`) loads the same
way, from its safetensors weights and card: the same methods, no Lightning module.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
import trimesh

from recon3d.cli.options import resolve_device
from recon3d.inference.autoencoder import extract_mesh
from recon3d.inference.latent import interpolate_codes
from recon3d.inference.photo import FILL, Photo, prepare_photo
from recon3d.inference.splits import model_input
from recon3d.inference.vrn import vrn_mesh
from recon3d.models.exported import CARD, load_export
from recon3d.tasks.checkpoints import load_checkpoint, load_with_autoencoder, read_checkpoint, stage_of

Endpoint = Union[int, np.ndarray, torch.Tensor, str, Path]  # a GAN seed, a code, or an image (svr)


def load(path: str | Path, device: str = "auto") -> "Model":
    """The model of a recon3d checkpoint (a file, a run folder, or a DeepSpeed folder) or of an export folder
    (`recon3d export`) on `device` (auto: cuda when available), ready to use.

    Raises:
        FileNotFoundError, ValueError: no such checkpoint, or not a recon3d one (naming the path).
    """
    device = resolve_device(device)
    if (Path(path) / CARD).is_file():
        return _exported(path, device)
    stage = stage_of(read_checkpoint(path), str(path)).name
    if stage in ("svr", "gan"):
        task, autoencoder = load_with_autoencoder(path, device, expect=stage)
    else:
        task = load_checkpoint(path, device, expect=stage)
        autoencoder = task if stage == "autoencoder" else None
    return Model(stage, task, autoencoder, device, str(path))


class _Hparams(dict):
    """An export card's hyperparameters, read as a task's are (hp.name or hp.get(name))."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Exported(torch.nn.Module):
    """An exported network where the inference helpers expect a task: its hyperparameters and its module under the
    attribute the task keeps it in (model, encoder, sampler)."""

    def __init__(self, hparams: dict, **modules: torch.nn.Module) -> None:
        super().__init__()
        self.hparams = _Hparams(hparams)
        for name, module in modules.items():
            setattr(self, name, module)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def codes_for_seeds(self, seeds: Sequence[int]) -> torch.Tensor:
        return self.sampler.codes_for_seeds(seeds)


def _exported(folder: str | Path, device: str) -> "Model":
    card, parts = load_export(folder, device)
    hp = {name: entry["hyper_parameters"] for name, entry in card["parts"].items()}
    stage = card["stage"]
    autoencoder = _Exported(hp["autoencoder"], model=parts["autoencoder"]) if "autoencoder" in parts else None
    task = {"autoencoder": lambda: autoencoder,
            "svr": lambda: _Exported(hp["image_encoder"], encoder=parts["image_encoder"]),
            "gan": lambda: _Exported(hp["generator"], sampler=parts["generator"]),
            "vrn": lambda: _Exported(hp["volume_regressor"], model=parts["volume_regressor"]),
            "stereo": lambda: _Exported(hp["view_synthesizer"], model=parts["view_synthesizer"])}[stage]()
    return Model(stage, task, autoencoder, device, str(folder))


class Model:
    """A trained recon3d model: `stage` (autoencoder, svr, gan, vrn, stereo), `task` (its Lightning module) and,
    for the stages that decode codes, `autoencoder`."""

    def __init__(self, stage: str, task, autoencoder, device: str, path: str) -> None:
        self.stage, self.task, self.autoencoder, self.device, self.path = stage, task, autoencoder, device, path

    def __repr__(self) -> str:
        return f"recon3d.Model(stage={self.stage!r}, path={self.path!r}, device={self.device!r})"

    def _needs(self, stages: Sequence[str], what: str) -> None:
        if self.stage not in stages:
            raise ValueError(f"{self.path}: a {self.stage} model cannot {what}; that needs a {' or '.join(stages)} "
                             "checkpoint")

    def _view(self, image: Photo, fill: float) -> torch.Tensor:
        view = prepare_photo(image, int(self.task.hparams.get("image_size", 137)), fill)
        return model_input(view, self.task)

    @torch.no_grad()
    def encode(self, x, fill: float = FILL) -> np.ndarray:
        """The latent code (Z,) float32 of a shape: for the autoencoder, x is its solid voxels (R, R, R) (bool or
        0/1, R as the model was trained on); for the image encoder, x is an image (framed as `recon3d reconstruct`
        frames photos)."""
        self._needs(("autoencoder", "svr"), "encode")
        if self.stage == "svr":
            return self.task.encoder(self._view(x, fill))[0].float().cpu().numpy()
        voxels = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)
        if voxels.ndim != 3 or len(set(voxels.shape)) != 1:
            raise ValueError(f"voxels must be (R, R, R), got {tuple(voxels.shape)}")
        return self.autoencoder.model.encoder(voxels[None, None])[0].float().cpu().numpy()

    @torch.no_grad()
    def decode(self, z, resolution: int = 128) -> trimesh.Trimesh:
        """The mesh of a latent code (Z,), through the autoencoder (the model's own, or the one it carries)."""
        self._needs(("autoencoder", "svr", "gan"), "decode")
        code = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=self.device).reshape(-1)
        verts, faces, _ = extract_mesh(self.autoencoder, code, resolution)
        return trimesh.Trimesh(verts, faces, process=False)

    def reconstruct(self, image: Photo, resolution: int = 128, fill: float = FILL) -> trimesh.Trimesh:
        """The mesh of the object in an image: the image encoder's code decoded, or VRN's volume (camera frame)."""
        self._needs(("svr", "vrn"), "reconstruct an image")
        if self.stage == "svr":
            return self.decode(self.encode(image, fill), resolution)
        with torch.no_grad():
            verts, faces = vrn_mesh(self.task, self._view(image, fill))
        return trimesh.Trimesh(verts, faces, process=False)

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0, resolution: int = 128) -> List[trimesh.Trimesh]:
        """n new shapes from the latent GAN, sample i from noise seed `seed` + i."""
        self._needs(("gan",), "generate")
        codes = self.task.codes_for_seeds(range(seed, seed + n))
        return [self.decode(z, resolution) for z in codes]

    @torch.no_grad()
    def interpolate(self, a: Endpoint, b: Endpoint, steps: int = 5, resolution: int = 128) -> List[trimesh.Trimesh]:
        """`steps` shapes on the straight line between two codes, from a to b. An endpoint is a code, a GAN seed
        (an int; the GAN) or an image (the image encoder)."""
        self._needs(("autoencoder", "svr", "gan"), "interpolate")
        ends = [torch.as_tensor(self._code(e), dtype=torch.float32, device=self.device).reshape(-1) for e in (a, b)]
        return [self.decode(z, resolution) for z in interpolate_codes(ends[0], ends[1], steps)]

    def _code(self, endpoint: Endpoint):
        if isinstance(endpoint, (int, np.integer)):
            self._needs(("gan",), "turn a seed into a code")
            return self.task.codes_for_seeds([int(endpoint)])[0]
        if isinstance(endpoint, (str, Path)):
            self._needs(("svr",), "turn an image into a code")
            return self.encode(endpoint)
        return endpoint
