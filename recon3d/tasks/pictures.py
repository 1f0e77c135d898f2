"""The picture a task saves at each validation (<run>/<the stage's picture folder>/epoch_NNNN.png), logged to W&B
with its meshes when the run uses W&B."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import trimesh
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from recon3d.files import atomic_path
from recon3d.stages import STAGES


def publish_image(task, image: np.ndarray, meshes: Sequence = ()) -> None:
    """Save `image` (H, W, 3) uint8 as <run_dir>/<the stage's picture folder>/epoch_NNNN.png and log it with the
    stage's caption to W&B when the run uses it, with `meshes` ((vertices (V, 3), faces (F, 3)) pairs) as 3D
    objects: each saved beside the picture as epoch_NNNN_K.glb, which W&B shows as a mesh. Call on rank 0."""
    row = STAGES[task.stage]
    name, caption = row.pictures, row.picture_caption
    run_dir = task.hparams.get("run_dir", "")
    folder = Path(run_dir) / name if run_dir else None
    if folder is not None:
        with atomic_path(folder / f"epoch_{task.current_epoch:04d}.png", keep_suffix=True) as tmp:
            Image.fromarray(image).save(tmp)
    for logger in task.loggers:
        if isinstance(logger, WandbLogger):  # recon3d's own is a subclass (SteppedWandbLogger): not by name
            logger.log_image(f"val/{name}", [image], step=task.global_step, caption=[caption])
            files = _mesh_files(folder, task.current_epoch, meshes) if folder is not None else []
            if files:
                import wandb  # noqa: PLC0415 - W&B only when used (1 s import)

                logger.experiment.log({f"val/{name}_3d": [wandb.Object3D(str(f)) for f in files]},
                                      step=task.global_step)


def _mesh_files(folder: Path, epoch: int, meshes: Sequence) -> List[Path]:
    """The non-empty meshes as GLB files epoch_NNNN_K.glb in `folder` (written through temp names)."""
    files = []
    for k, (vertices, faces) in enumerate(meshes):
        if len(faces):
            path = folder / f"epoch_{epoch:04d}_{k}.glb"
            with atomic_path(path, keep_suffix=True) as tmp:
                Path(tmp).write_bytes(trimesh.Trimesh(vertices, faces, process=False).export(file_type="glb"))
            files.append(path)
    return files
