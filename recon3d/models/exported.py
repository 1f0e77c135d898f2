"""Reading an export (`recon3d export`): card.json and weights.safetensors -> plain torch modules, with no Lightning
and no pickle (safetensors holds tensors only; the card is JSON).

An export folder holds:

    card.json              format, recon3d version, stage, each part's hyperparameters, metrics, the sha256 of the
                           shard manifest and of the checkpoint it came from, and its ONNX files with their check
    weights.safetensors    every part's weights, keyed <part>.<parameter> (svr and gan: their autoencoder too)
    <network>.onnx         the networks for serving (image_encoder, voxel_encoder, decoder, generator)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

from safetensors.torch import load_file
from torch import nn

from recon3d.models import networks

FORMAT = "recon3d-export/1"
CARD, WEIGHTS = "card.json", "weights.safetensors"
BUILDERS = {name: part.build for parts in networks.PARTS.values() for name, part in parts.items()}


def read_card(folder: str | Path) -> dict:
    """An export's card.

    Raises:
        FileNotFoundError: no card.json there; ValueError: not a recon3d export card.
    """
    path = Path(folder) / CARD
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not an export (no {CARD})")
    card = json.loads(path.read_text())
    if card.get("format") != FORMAT:
        raise ValueError(f"{path}: format {card.get('format')!r}, this recon3d reads {FORMAT}")
    return card


def load_export(folder: str | Path, device: str = "cpu") -> Tuple[dict, Dict[str, nn.Module]]:
    """(card, {part name: module in eval mode}) of an export folder: each part built from its card entry and given
    its weights (all of them, strictly)."""
    card = read_card(folder)
    tensors = load_file(str(Path(folder) / WEIGHTS), device=device)
    modules = {}
    for name, entry in card["parts"].items():
        module = BUILDERS[name](entry["hyper_parameters"])
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        modules[name] = module.eval().to(device)
    return card, modules
