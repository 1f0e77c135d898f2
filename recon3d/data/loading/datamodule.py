"""ShardDataModule: the LightningDataModule over a shard folder, one loader pipeline per kind of input; and
`iter_split`, every sample of a split once, for evaluation and inference."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

import lightning as L
from torch.utils.data import DataLoader

from recon3d.config import Config, LoaderConfig
from recon3d.data.loading.pipelines import (
    AutoencoderDecoder,
    ImageDecoder,
    StereoDecoder,
    VolumeDecoder,
    autoencoder_members,
    expand_batch,
    image_eval_members,
    image_members,
    image_train_members,
    stereo_members,
)
from recon3d.data.loading.remote import is_remote, split_shard_list
from recon3d.data.loading.shards import ShardInfo, load_manifest, shard_infos, unmet_needs
from recon3d.data.loading.streams import EvalStream, TrainStream, dist_context
from recon3d.data.loading.transfer import SlotLoader, keep_batch
from recon3d.data.schema import point_grid
from recon3d.stages import STAGES


class Pipeline(NamedTuple):
    decoder: Callable[["ShardDataModule"], object]  # the per-sample decoder, from the DataModule's settings
    members: Callable[["ShardDataModule", bool], Callable[[str], bool]]  # the tar members it reads (eval: bool)
    train_members: Optional[Callable[["ShardDataModule"], Callable[[str], bool]]] = None  # training's, when fewer


PIPELINES: Dict[str, Pipeline] = {  # loader.stage -> how its samples are read
    "autoencoder": Pipeline(lambda dm: AutoencoderDecoder(dm.point_resolution, dm.points_per_sample,
                                                          point_grid(dm.manifest, dm.point_resolution)
                                                          if dm.manifest else 0),
                            lambda dm, evaluation: autoencoder_members(dm.point_resolution, surface=evaluation),
                            # the point grid comes from the manifest: meta.json is not read per sample
                            lambda dm: autoencoder_members(dm.point_resolution, meta=False)),
    "image": Pipeline(lambda dm: ImageDecoder(dm.crop_size, dm.flip, dm.grayscale, dm.holdout_views),
                      lambda dm, evaluation: image_eval_members if evaluation else image_members,
                      lambda dm: image_train_members),
    "volume": Pipeline(lambda dm: VolumeDecoder(dm.crop_size, dm.flip, dm.grayscale, dm.holdout_views,
                                                dm.volume_depth),
                       lambda dm, evaluation: image_members),
    "stereo": Pipeline(lambda dm: StereoDecoder(dm.crop_size, dm.grayscale, dm.holdout_views),
                       lambda dm, evaluation: stereo_members),
}


def loader_pipeline(cfg: Config) -> str:
    """The loader pipeline a config reads: loader.stage when set, else the one its train.stage reads."""
    return cfg.loader.stage or STAGES[cfg.train.stage].loader


class ShardDataModule(L.LightningDataModule):
    """Train/val/test loaders over `<shards>/manifest.json` for the "autoencoder" or "image" stage.

    The autoencoder stage gives voxels (B, 1, R, R, R), points (B, P, 3) and values (B, P, 1) at
    `point_resolution`; `set_point_resolution` switches it between phases of progressive training. The image stage
    gives image (B, C, crop, crop), view (B,), camera_k (B, 3, 3), camera_rt (B, 3, 4) and voxels; the volume stage
    the same without voxels but with volume (B, D, crop/4, crop/4), the view-aligned occupancy; the stereo stage
    left and right (B, C, crop, crop) and mean_disparity (B,). Loaders carry
    voxels, values and point indices as uint8 (4x less to move from workers and to the GPU); Lightning calls
    `on_after_batch_transfer`, which expands them to float32 on the device. Outside Lightning call `expand_batch`.
    """

    def __init__(self, *, shards: str, stage: str = "autoencoder", batch_size: int = 16, num_workers: int = 2,
                 point_resolution: int = 16, points_per_sample: int = 0, crop_size: int = 128, flip: bool = True,
                 grayscale: bool = True, volume_depth: int = 32, holdout_views: int = 0,
                 train_samples_per_epoch: int = 0, shuffle_buffer: int = 512, persistent_workers: bool = True,
                 seed: int = 0, verify: str = "size", cache_dir: str = "", rank: Optional[int] = None,
                 world_size: Optional[int] = None) -> None:
        super().__init__()
        location, self.listed = split_shard_list(str(shards))  # a folder, a URL or a shard list (loading/remote.py)
        self.shard_dir = location if is_remote(location) else Path(location)
        self.cache_dir = cache_dir
        self.stage = stage
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.point_resolution = point_resolution
        self.points_per_sample = points_per_sample
        self.crop_size, self.flip, self.grayscale = crop_size, flip, grayscale
        self.holdout_views = holdout_views
        self.volume_depth = volume_depth
        self.train_samples_per_epoch = train_samples_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.persistent_workers = persistent_workers
        self.seed = seed
        self.verify = verify
        self._checked: set = set()  # file states of the shards that passed loader.verify (not looked at again)
        self._rank, self._world = rank, world_size
        self.manifest: dict = {}
        self._taken = (0, 0)  # (epoch, training batches of it the trainer has taken): see state_dict
        self._resume: Optional[dict] = None

    @classmethod
    def from_config(cls, cfg: Config | LoaderConfig, **kwargs) -> "ShardDataModule":
        """From a whole Config (the pipeline follows train.stage unless loader.stage is set) or its loader section
        (loader.stage must then be set, or `stage` given)."""
        loader = cfg.loader if isinstance(cfg, Config) else cfg
        fields = {f: getattr(loader, f) for f in LoaderConfig.__dataclass_fields__}
        fields["stage"] = kwargs.pop("stage", "") or (loader_pipeline(cfg) if isinstance(cfg, Config) else
                                                      loader.stage) or "autoencoder"
        return cls(**fields, **kwargs)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.stage not in PIPELINES:
            raise ValueError(f"loader stage {self.stage!r}: one of {', '.join(PIPELINES)}")
        self.manifest = load_manifest(self.shard_dir)
        unknown = sorted(set(self.listed or ()) - {s["name"] for s in self.manifest["shards"]})
        if unknown:
            raise ValueError(f"{self.shard_dir}: the shard list names {', '.join(unknown)}, which its manifest "
                             f"does not")
        unmet = unmet_needs(self.manifest, self.stage, holdout_views=self.holdout_views,
                            point_resolution=self.point_resolution)
        if unmet:
            raise ValueError(f"{self.shard_dir}: {unmet}")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:  # the training batches of this epoch taken so far
            epoch, taken = self._taken
            self._taken = (trainer.current_epoch, (taken if epoch == trainer.current_epoch else 0) + 1)
        batch = expand_batch(batch)
        # Lightning casts inputs for the precision before this hook, while they are still uint8: cast the expanded
        # floats now (DeepSpeed's bf16/fp16 keeps the weights in that type; under autocast this is a no-op)
        return trainer.precision_plugin.convert_input(batch) if trainer is not None else batch

    def _signature(self) -> str:
        """What decides the training epoch's batches (a mid-epoch resume skips batches only when it is unchanged)."""
        _, world = dist_context(self._rank, self._world)
        shards = [(s["name"], s["samples"]) for s in self.manifest.get("shards", []) if s["split"] == "train"]
        fields = [self.stage, self.batch_size, self.seed, self.train_samples_per_epoch, world, shards]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the epoch and how many of its training batches the trainer had taken, so a
        run resumed from a mid-epoch checkpoint (preemption, train.checkpoint_every_steps) goes on with the batches
        it had not seen instead of starting the epoch's order again."""
        epoch, taken = self._taken
        return {"epoch": epoch, "batches": taken, "signature": self._signature() if self.manifest else ""}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)

    def _resume_skip(self, epoch: int) -> int:
        """Training batches of `epoch` to skip: those taken before the checkpoint this run resumed from."""
        state, self._resume = self._resume, None
        if not state or state.get("epoch") != epoch or not state.get("batches"):
            return 0
        if state.get("signature") != self._signature():
            logging.getLogger("recon3d.data").warning(
                "resuming in the middle of epoch %d with other loader settings (batch size, seed, shards or ranks): "
                "the epoch's order starts again", epoch)
            return 0
        self._taken = (epoch, int(state["batches"]))
        return int(state["batches"])

    def set_point_resolution(self, resolution: int) -> None:
        """Switch the autoencoder stage to another stored point set; takes effect in loaders made after the call
        (with persistent workers, ask the trainer to reload its dataloaders)."""
        self.point_resolution = resolution

    def shard_infos(self, split: str) -> List[ShardInfo]:
        if not self.manifest:
            self.setup()
        return shard_infos(self.shard_dir, split, self.manifest, check=self.verify != "off",
                           checksum=self.verify == "sha256", checked=self._checked, cache_dir=self.cache_dir,
                           only=self.listed)

    def _decoder(self):
        return PIPELINES[self.stage].decoder(self)

    def _members(self, evaluation: bool = False):
        return PIPELINES[self.stage].members(self, evaluation)

    def _loader(self, dataset) -> DataLoader:
        return SlotLoader(dataset, batch_size=None, collate_fn=keep_batch, num_workers=self.num_workers,
                          persistent_workers=self.persistent_workers and self.num_workers > 0, pin_memory=False)

    def train_dataloader(self) -> DataLoader:
        train_members = PIPELINES[self.stage].train_members
        members = train_members(self) if train_members else self._members()
        stream = TrainStream(self.shard_infos("train"), self._decoder(), self.batch_size, members=members,
                             samples_per_epoch=self.train_samples_per_epoch, shuffle_buffer=self.shuffle_buffer,
                             seed=self.seed, rank=self._rank, world_size=self._world)
        trainer = getattr(self, "trainer", None)
        # the epoch these batches are for, counted as Lightning does for samplers: after a resume from an epoch-end
        # checkpoint the trainer's current_epoch still names the finished epoch, which Lightning then closes
        # without iterating, so the loader must start at the next one (it started one early and lost an epoch)
        epoch = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0
        stream.set_epoch(epoch)
        stream.skip_batches = self._resume_skip(epoch)
        return self._loader(stream)

    def split_dataloader(self, split: str, *, surface: bool = True) -> DataLoader:
        """Every sample of `split` once (over all ranks and workers), in a fixed order; `surface` adds the stored
        surface samples to autoencoder batches (for surface metrics)."""
        stream = EvalStream(self.shard_infos(split), self._decoder(), self.batch_size, members=self._members(surface),
                            num_workers=self.num_workers, seed=self.seed, rank=self._rank, world_size=self._world)
        return self._loader(stream)

    def val_dataloader(self) -> DataLoader:
        return self.split_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.split_dataloader("test")


def iter_split(shard_dir: str | Path, split: str, batch_size: int, *, surface: bool = False,
               **loader) -> Iterator[dict]:
    """Every sample of a split once, in manifest order, as expanded batches (voxels float); `loader` keywords go to
    ShardDataModule (e.g. stage="image" with a model's crop and channels)."""
    dm = ShardDataModule(shards=str(shard_dir), batch_size=batch_size, num_workers=0, rank=0, world_size=1, **loader)
    dm.setup()
    dm.set_point_resolution(dm.manifest["config"]["geometry"]["point_resolutions"][0])
    for batch in dm.split_dataloader(split, surface=surface):
        yield expand_batch(batch)
