"""Latent codes stored next to the shards: `<shards>/latents/<name>/`, keyed by the same sample keys.

Files per split: `<split>.npy` (N, Z) float32 and `<split>.keys.json` (N keys, same order); `latents.json` records
the checkpoint, the latent size and the sha256 of every file, so readers can trust what they load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import lightning as L
import numpy as np
import torch
from torch.utils import data as torch_data

from recon3d.config import Config
from recon3d.data.schema import npy_bytes
from recon3d.errors import ConfigError
from recon3d.files import atomic_write, file_sha256
from recon3d.runs import run_name
from recon3d.storage import fetched, is_object_url, join

INDEX = "latents.json"


def default_latents(shards: str | Path, autoencoder_ckpt: str | Path, latents: str = "") -> str:
    """`latents`, or where `recon3d export-latents` puts an autoencoder's codes: <shards>/latents/<its run name>;
    latents in a bucket are brought into a local copy first (recon3d.storage.fetched) and that copy is named."""
    if latents:
        location = str(latents)
    elif is_object_url(shards):
        location = join(str(shards), "latents", run_name(autoencoder_ckpt))
    else:
        location = str(Path(shards) / "latents" / run_name(autoencoder_ckpt))
    return str(fetched(location)) if is_object_url(location) else location  # a bucket's: read from a local copy


def write_latents(out_dir: Path, latents: Dict[str, Tuple[List[str], np.ndarray]], info: dict) -> Path:
    """Write {split: (keys, codes (N, Z))} atomically plus the index with checksums; returns the index path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, (keys, codes) in latents.items():
        if len(keys) != len(codes):
            raise ValueError(f"{split}: {len(keys)} keys but {len(codes)} codes")
        codes_path, keys_path = out_dir / f"{split}.npy", out_dir / f"{split}.keys.json"
        atomic_write(codes_path, npy_bytes(np.asarray(codes, dtype=np.float32)))
        atomic_write(keys_path, json.dumps(keys).encode())
        splits[split] = {"count": len(keys), "codes": codes_path.name, "codes_sha256": file_sha256(codes_path),
                         "keys": keys_path.name, "keys_sha256": file_sha256(keys_path)}
    index = dict(info, splits=splits, latent_dim=int(next(iter(latents.values()))[1].shape[1]) if latents else 0)
    atomic_write(out_dir / INDEX, json.dumps(index, indent=1, sort_keys=True).encode())
    return out_dir / INDEX


def read_latents(out_dir: str | Path, split: str) -> Tuple[List[str], np.ndarray]:
    """(keys, codes) of one split, after checking both files against the index.

    Raises:
        FileNotFoundError: no index or no such split; ValueError: a checksum differs.
    """
    out_dir = Path(out_dir)
    index_path = out_dir / INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"{out_dir}: no {INDEX} (run `recon3d export-latents`)")
    entry = json.loads(index_path.read_text())["splits"].get(split)
    if entry is None:
        raise FileNotFoundError(f"{out_dir}: no latents for split {split!r}")
    for name, digest in ((entry["codes"], entry["codes_sha256"]), (entry["keys"], entry["keys_sha256"])):
        if Path(name).name != name:  # the index names files of its own folder, nothing elsewhere
            raise ValueError(f"{index_path}: names {name!r}, not a file of {out_dir}")
        if file_sha256(out_dir / name) != digest:
            raise ValueError(f"{out_dir / name}: sha256 differs from {INDEX}; re-export the latents")
    keys = json.loads((out_dir / entry["keys"]).read_text())
    return keys, np.load(out_dir / entry["codes"], allow_pickle=False)


def latent_size(out_dir: str | Path) -> int:
    """The size of the codes in a latents folder, from its index (0 when it has none)."""
    index = Path(out_dir) / INDEX
    return int(json.loads(index.read_text()).get("latent_dim", 0)) if index.is_file() else 0


def read_all_latents(out_dir: str | Path) -> Tuple[List[str], np.ndarray]:
    """Keys and codes of every split of a latents folder, train, val, test in that order (checked as read_latents).

    Raises:
        FileNotFoundError: no split has latents.
    """
    keys, codes = [], []
    for split in ("train", "val", "test"):
        try:
            split_keys, split_codes = read_latents(out_dir, split)
        except FileNotFoundError:
            continue
        keys += split_keys
        codes.append(split_codes)
    if not keys:
        raise FileNotFoundError(f"{out_dir}: no exported latents (run `recon3d export-latents`)")
    return keys, np.concatenate(codes)


class _Repeated(torch_data.Dataset):
    """Codes (N, Z) seen `length` times per epoch (index modulo N), so an epoch can hold more steps than shapes."""

    def __init__(self, codes: np.ndarray, length: int) -> None:
        self.codes = torch.as_tensor(codes, dtype=torch.float32)
        self.length = max(length, len(codes))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.codes[index % len(self.codes)]


class LatentDataModule(L.LightningDataModule):
    """Loaders over exported latents for the latent GAN: shuffled train codes, and the val codes (the train codes
    when there is no val split). Under DDP Lightning adds a DistributedSampler, so each rank sees its share."""

    def __init__(self, *, latents: str, batch_size: int = 64, samples_per_epoch: int = 0) -> None:
        super().__init__()
        self.latents, self.batch_size, self.samples_per_epoch = latents, batch_size, samples_per_epoch
        self.codes: Dict[str, np.ndarray] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> "LatentDataModule":
        """The codes of cfg.gan.autoencoder_ckpt exported next to cfg.loader.shards (or gan.latents)."""
        if not cfg.gan.autoencoder_ckpt:
            raise ConfigError("train.stage=gan needs gan.autoencoder_ckpt (the trained autoencoder)")
        return cls(latents=default_latents(cfg.loader.shards, cfg.gan.autoencoder_ckpt, cfg.gan.latents),
                   batch_size=cfg.gan.batch_size, samples_per_epoch=cfg.gan.samples_per_epoch)

    def setup(self, stage: Optional[str] = None) -> None:
        for split in ("train", "val"):
            try:
                self.codes[split] = read_latents(self.latents, split)[1]
            except FileNotFoundError:
                if split == "train":
                    raise
        self.codes.setdefault("val", self.codes["train"])

    @property
    def latent_dim(self) -> int:
        return int(self.codes["train"].shape[1])

    def train_dataloader(self):
        data = _Repeated(self.codes["train"], self.samples_per_epoch)
        return torch_data.DataLoader(data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        data = _Repeated(self.codes["val"], 0)
        return torch_data.DataLoader(data, batch_size=self.batch_size)
