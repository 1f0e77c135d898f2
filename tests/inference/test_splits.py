import pytest
import torch

from recon3d.data.loading.datamodule import iter_split
from recon3d.inference.splits import pick_batch, sheet_keys, split_keys


def test_split_keys_and_picked_samples_follow_the_shards(tiny_shards):
    loaded = [key for batch in iter_split(tiny_shards, "train", 4) for key in batch["key"]]
    assert split_keys(tiny_shards, "train") == loaded  # from the indexes, in manifest order
    chosen = sheet_keys(tiny_shards, "train", 3)
    assert len({key.split("/")[0] for key in chosen}) == 3  # chair, table, car: one of each
    batch = pick_batch(tiny_shards, "train", chosen[::-1])
    assert batch["key"] == chosen[::-1] and batch["voxels"].shape[0] == 3
    whole = {key: voxels for b in iter_split(tiny_shards, "train", 4) for key, voxels in zip(b["key"], b["voxels"])}
    assert all(torch.equal(v, whole[k]) for k, v in zip(batch["key"], batch["voxels"]))
    with pytest.raises(KeyError, match="no 'chair/none' in the train split"):
        pick_batch(tiny_shards, "train", [chosen[0], "chair/none"])
