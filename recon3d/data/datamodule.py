"""ShardDataModule: the LightningDataModule over a shard folder, one pipeline per training stage."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import lightning as L
from torch.utils.data import DataLoader

from recon3d.config import LoaderConfig
from recon3d.data.pipelines import (AutoencoderDecoder, EvalStream, ImageDecoder, ShardInfo, StereoDecoder,
                                    TrainStream, VolumeDecoder, autoencoder_members, expand_batch, image_eval_members,
                                    image_members, stereo_members)
from recon3d.data.writer import load_manifest


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
                 grayscale: bool = True, volume_depth: int = 32, holdout_views: int = 0, train_samples_per_epoch: int = 0,
                 shuffle_buffer: int = 64,
                 persistent_workers: bool = True, seed: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None) -> None:
        super().__init__()
        self.shard_dir = Path(shards)
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
        self._rank, self._world = rank, world_size
        self.manifest: dict = {}

    @classmethod
    def from_config(cls, cfg: LoaderConfig, **kwargs) -> "ShardDataModule":
        fields = {k: getattr(cfg, k) for k in ("shards", "stage", "batch_size", "num_workers", "point_resolution",
                                               "points_per_sample", "crop_size", "flip", "grayscale", "volume_depth",
                                               "holdout_views",
                                               "train_samples_per_epoch", "shuffle_buffer", "persistent_workers",
                                               "seed")}
        return cls(**fields, **kwargs)

    def setup(self, stage: Optional[str] = None) -> None:
        self.manifest = load_manifest(self.shard_dir)
        stored = self.manifest["config"]["geometry"]["point_resolutions"]
        views = int(self.manifest["config"]["render"]["views"])
        if self.stage == "stereo" and not self.manifest["config"]["render"].get("stereo_baseline"):
            raise ValueError(f"{self.shard_dir}: loader.stage=stereo needs right-eye views; these shards were built "
                             f"with render.stereo_baseline=0 (rebuild with e.g. render.stereo_baseline=0.1)")
        if self.stage != "autoencoder" and views <= self.holdout_views:
            raise ValueError(f"{self.shard_dir}: loader.holdout_views={self.holdout_views} but the shards hold "
                             f"{views} views per shape; none would be left to train on")
        if self.stage == "autoencoder" and self.manifest["source"]["kind"] != "imnet_hdf5" and \
                self.point_resolution not in stored:
            raise ValueError(f"{self.shard_dir}: no point set at {self.point_resolution}^3 (stored: {stored})")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        return expand_batch(batch)

    def set_point_resolution(self, resolution: int) -> None:
        """Switch the autoencoder stage to another stored point set; takes effect in loaders made after the call
        (with persistent workers, ask the trainer to reload its dataloaders)."""
        self.point_resolution = resolution

    def shard_infos(self, split: str) -> List[ShardInfo]:
        if not self.manifest:
            self.setup()
        return [ShardInfo(str(self.shard_dir / f"{s['name']}.tar"), s["samples"])
                for s in self.manifest["shards"] if s["split"] == split]

    def _decoder(self):
        if self.stage == "autoencoder":
            return AutoencoderDecoder(self.point_resolution, self.points_per_sample)
        if self.stage == "volume":
            return VolumeDecoder(self.crop_size, self.flip, self.grayscale, self.holdout_views, self.volume_depth)
        if self.stage == "stereo":
            return StereoDecoder(self.crop_size, self.grayscale, self.holdout_views)
        return ImageDecoder(self.crop_size, self.flip, self.grayscale, self.holdout_views)

    def _members(self, evaluation: bool = False):
        if self.stage == "autoencoder":
            return autoencoder_members(self.point_resolution, surface=evaluation)
        if self.stage == "stereo":
            return stereo_members
        return image_eval_members if evaluation and self.stage == "image" else image_members

    def _loader(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.persistent_workers and self.num_workers > 0, pin_memory=False)

    def train_dataloader(self) -> DataLoader:
        stream = TrainStream(self.shard_infos("train"), self._decoder(), self.batch_size, members=self._members(),
                             samples_per_epoch=self.train_samples_per_epoch, shuffle_buffer=self.shuffle_buffer,
                             seed=self.seed, rank=self._rank, world_size=self._world)
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
