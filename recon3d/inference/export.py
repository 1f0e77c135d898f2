"""`recon3d export CKPT -o DIR`: a checkpoint of any stage as an export folder that loads without Lightning or pickle
(`recon3d.models.exported`), plus ONNX networks for serving, each checked with onnxruntime against torch.

The folder is written beside DIR under a temporary name and renamed into place at the end, so DIR is either the
previous export or the new one, never half of each. ONNX needs the `export` extra (onnx, onnxscript, onnxruntime);
`onnx=False` writes the weights and the card alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from recon3d import __version__
from recon3d.files import file_sha256
from recon3d.models.exported import CARD, FORMAT, WEIGHTS, read_card
from recon3d.models.networks import PARTS
from recon3d.runs import run_folder
from recon3d.tasks.checkpoints import (
    checkpoint_file,
    load_checkpoint,
    load_with_autoencoder,
    read_checkpoint,
    stage_of,
)

ONNX_TOLERANCE = 1e-4  # largest |onnxruntime - torch| accepted (fp32, on the CPU)
ONNX_OPSET = 18
# the networks served as ONNX, per stage: (file stem, part, attribute of the part or "" for the part itself)
SERVED = {"autoencoder": (("voxel_encoder", "autoencoder", "encoder"), ("decoder", "autoencoder", "decoder")),
          "svr": (("image_encoder", "image_encoder", ""), ("decoder", "autoencoder", "decoder")),
          "gan": (("generator", "generator", ""), ("decoder", "autoencoder", "decoder"))}


def _jsonable(value):
    """Hyperparameters as JSON: tuples become lists; anything JSON cannot hold becomes its text."""
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, (tuple, set)) else str(v)))


def _parts(ckpt: Path, stage: str) -> Dict[str, Tuple[dict, nn.Module]]:
    """{part: (hyperparameters, module with the checkpoint's weights)} of a checkpoint, built as an export loads
    them (recon3d.models.networks), so what is exported is what loads."""
    if stage in ("svr", "gan"):
        task, autoencoder = load_with_autoencoder(ckpt, "cpu", expect=stage)
        found = {"autoencoder": (dict(autoencoder.hparams), autoencoder.state_dict(), "model.")}
    else:
        task, found = load_checkpoint(ckpt, "cpu", expect=stage), {}
    hparams = dict(task.hparams)
    for name, part in PARTS[stage].items():
        found[name] = (hparams, task.state_dict(), part.prefix(hparams))
    parts = {}
    for name, (hp, state, prefix) in found.items():
        builder = PARTS["autoencoder"]["autoencoder"].build if name == "autoencoder" else PARTS[stage][name].build
        module = builder(hp)
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        parts[name] = (_jsonable(hp), module.eval())
    return parts


def _metrics(checkpoint: dict) -> dict:
    """The best score of each checkpoint callback, and where training stood."""
    metrics = {"global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch")}
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            metrics[f"best {state['monitor']}"] = float(state["best_model_score"])
    return metrics


def _manifest_sha256(ckpt: Path) -> str | None:
    """sha256 of the manifest of the shards the run trained on (its run folder's config names them), when there."""
    config = run_folder(ckpt) / "config.json"
    if not config.is_file():
        return None
    manifest = Path(json.loads(config.read_text())["loader"]["shards"]) / "manifest.json"
    return file_sha256(manifest) if manifest.is_file() else None


def _example(stem: str, module: nn.Module, hp: dict, batch: int) -> Tuple[Tuple[torch.Tensor, ...], list]:
    """Example inputs of a served network and their names."""
    gen = torch.Generator().manual_seed(batch)
    if stem == "image_encoder":
        return (torch.rand(batch, hp["image_channels"], hp["crop_size"], hp["crop_size"], generator=gen),), ["image"]
    if stem == "voxel_encoder":
        res = hp["voxel_resolution"]
        return ((torch.rand(batch, 1, res, res, res, generator=gen) > 0.5).float(),), ["voxels"]
    if stem == "generator":
        return (torch.randn(batch, hp["noise_dim"], generator=gen),), ["noise"]
    points = 1000 + 17 * batch
    return (torch.rand(batch, points, 3, generator=gen) - 0.5, torch.randn(batch, hp["latent_dim"], generator=gen)), \
        ["points", "z"]


def _onnx(stem: str, module: nn.Module, hp: dict, path: Path) -> dict:
    """Export one network to ONNX (batch, and the decoder's point count, dynamic) and check it with onnxruntime on
    inputs of another batch size; returns its card entry.

    Raises:
        RuntimeError: onnxruntime disagrees with torch by more than ONNX_TOLERANCE.
    """
    import onnxruntime  # noqa: PLC0415 - the export extra

    args, names = _example(stem, module, hp, 2)
    shapes = {name: {0: torch.export.Dim("batch", min=1, max=4096)} for name in names}
    if stem == "decoder":
        shapes["points"][1] = torch.export.Dim("points", min=1, max=2 ** 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["output"], dynamo=True,
                          dynamic_shapes=shapes, external_data=False, opset_version=ONNX_OPSET, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check, _ = _example(stem, module, hp, 3)
    with torch.no_grad():
        expected = module(*check).numpy()
    got = session.run(None, {name: x.numpy() for name, x in zip(names, check)})[0]
    difference = float(np.abs(got - expected).max())
    if not difference <= ONNX_TOLERANCE:
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {difference:.3g} "
                           f"(tolerance {ONNX_TOLERANCE:g})")
    return {"inputs": {name: ["batch" if i == 0 else "points" if (stem, name, i) == ("decoder", "points", 1) else n
                              for i, n in enumerate(x.shape)] for name, x in zip(names, check)},
            "output": "output", "opset": ONNX_OPSET, "max_abs_diff": difference, "tolerance": ONNX_TOLERANCE}


def export(ckpt: str | Path, out_dir: str | Path, *, onnx: bool = True) -> dict:
    """Write the export folder of a checkpoint (file, run folder or DeepSpeed folder); returns its card.

    Raises:
        ValueError: out_dir holds something that is not an export; ONNX asked for without the export extra.
        RuntimeError: an ONNX network disagrees with torch.
    """
    out = Path(out_dir)
    if out.exists() and not (out / CARD).is_file() and any(out.iterdir()):
        raise ValueError(f"{out}: exists and is not an export; name an empty or new folder")
    if onnx:
        try:
            import onnxruntime  # noqa: F401, PLC0415 - the export extra
            import onnxscript  # noqa: F401, PLC0415
        except ImportError:
            raise ValueError("ONNX export needs the export extra: pip install 'recon3d[export]' (or --no-onnx for "
                             "the weights and card alone)") from None
    path = checkpoint_file(ckpt)
    checkpoint = read_checkpoint(path)
    stage = stage_of(checkpoint, str(path)).name
    parts = _parts(path, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({f"{name}.{key}": value.detach().contiguous() for name, (_, module) in parts.items()
                   for key, value in module.state_dict().items()}, str(work / WEIGHTS))
        served = {}
        for stem, part, attribute in SERVED.get(stage, ()) if onnx else ():
            hp, module = parts[part]
            served[f"{stem}.onnx"] = _onnx(stem, getattr(module, attribute) if attribute else module, hp,
                                           work / f"{stem}.onnx")
        card = {"format": FORMAT, "recon3d_version": __version__, "stage": stage,
                "parts": {name: {"hyper_parameters": hp} for name, (hp, _) in parts.items()},
                "metrics": _metrics(checkpoint), "shards_manifest_sha256": _manifest_sha256(path),
                "checkpoint": {"path": str(path.resolve()), "sha256": file_sha256(path)}, "onnx": served}
        (work / CARD).write_text(json.dumps(card, indent=1, sort_keys=True))
        old = out.with_name(f".{out.name}.old") if out.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)  # the previous export steps aside; the new one takes its name at once
        work.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return read_card(out)
