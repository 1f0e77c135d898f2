import pytest
import torch

from recon3d.data.datamodule import iter_split
from recon3d.inference.splits import pick_batch, sheet_keys, split_keys, take_in_turn


def test_take_in_turn_spreads_over_categories_in_the_given_order():
    keys = [f"airplane/a{i}" for i in range(4)] + ["car/c0", "car/c1"] + [f"table/t{i}" for i in range(3)]
    assert take_in_turn(keys, 3) == ["airplane/a0", "car/c0", "table/t0"]
    assert take_in_turn(keys, 5) == ["airplane/a0", "airplane/a1", "car/c0", "car/c1", "table/t0"]
    assert take_in_turn(keys, 8) == [k for k in keys if k != "airplane/a3"]  # cars run out: the others fill in
    assert take_in_turn(keys, 20) == keys and take_in_turn(keys, 0) == [] and take_in_turn([], 4) == []


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
