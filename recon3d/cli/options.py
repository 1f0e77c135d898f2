"""The option groups that several verbs share, each declared once: config files and overrides, --ckpt, --shards,
--device, --split, -o/--output, and mesh output."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from recon3d.config import load_config
from recon3d.stages import STAGES

SPLITS = ("train", "val", "test")
CHECKPOINT_KINDS = ", ".join(STAGES)


@dataclass(frozen=True)
class Verb:
    """One `recon3d` verb: its name, its help line, what it adds to its parser, and what runs it (-> exit code)."""
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Optional[Callable[[argparse.Namespace], int]] = None  # None: the verb has sub-verbs (configure adds them)


def resolve_device(name: str) -> str:
    """--device as a verb uses it: auto is cuda when torch sees a CUDA device (CUDA_VISIBLE_DEVICES included), else
    cpu; cuda (or cuda:N) must name a device torch sees.

    Raises:
        ValueError: cuda asked for where there is none (or not that many).
    """
    if name == "cpu":
        return name
    import torch  # noqa: PLC0415 - resolved when a verb runs: building the parser (--help) loads no torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        suffix = name.partition(":")[2]
        index = int(suffix) if suffix.isdigit() else 0 if name == "cuda" else -1
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not 0 <= index < count:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
            raise ValueError(f"--device {name}: {count} CUDA device(s) visible here (CUDA_VISIBLE_DEVICES={visible}); "
                             "use --device cpu or auto")
    return name


def load_args_config(args: argparse.Namespace, extra: Sequence[str] = ()):
    """The Config a verb's -c files and key=value overrides give, then `extra` overrides (the verb's own flags)."""
    return load_config(args.config, [*args.overrides, *extra])


def config(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], metavar="YAML", required=required,
                        help="config file; several are merged left to right")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. shards.workers=2")


def ckpt(parser: argparse.ArgumentParser, what: str = f"checkpoint of any stage ({CHECKPOINT_KINDS})",
         required: bool = True) -> None:
    parser.add_argument("--ckpt", required=required, default="", help=what)


def shards(parser: argparse.ArgumentParser, required: bool = True, what: str = "shard folder") -> None:
    parser.add_argument("--shards", required=required, default="", help=what)


def device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")


def split(parser: argparse.ArgumentParser, default: str = "test") -> None:
    parser.add_argument("--split", default=default, choices=list(SPLITS) if default else ["", *SPLITS])


def output(parser: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    parser.add_argument("-o", "--output", required=required, default="", help=what)


def meshes(parser: argparse.ArgumentParser, resolution: int = 128) -> None:
    """-o, --resolution, --format and --device of the verbs that write meshes."""
    output(parser, "folder for the meshes and the sheet")
    parser.add_argument("--resolution", type=int, default=resolution, help="extraction grid cells per edge")
    parser.add_argument("--format", default="obj", choices=["obj", "ply", "glb"])
    device(parser)
