"""Real process groups (gloo, 2 ranks): ranks are detected from torch.distributed, not passed in."""

import json

import torch.distributed as dist

from recon3d.data.loading.datamodule import ShardDataModule
from tests.conftest import free_port


def _rank_main(rank, world, port, shards, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dm = ShardDataModule(shards=shards, batch_size=2, num_workers=2, point_resolution=16,
                             train_samples_per_epoch=10, shuffle_buffer=2)
        dm.setup()
        train = dm.train_dataloader()
        val_batches = list(dm.val_dataloader())
        val = [k for b in val_batches for k in b["key"]]
        result = {"train_batches": sum(1 for _ in train), "train_len": len(train), "val": val,
                  "val_batches": len(val_batches)}
        with open(f"{out}/rank{rank}.json", "w") as fh:
            json.dump(result, fh)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_split_the_epoch(tiny_shards, tmp_path, launch):
    launch.ranks(_rank_main, (2, free_port(), str(tiny_shards), str(tmp_path)), ranks=2,
                 start_method="fork")  # as under srun or Lightning's launcher: workers fork
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["train_batches"], r["train_len"]) for r in results] == [(3, 3), (3, 3)]  # ceil(10 / (2 x 2))
    seen = results[0]["val"] + results[1]["val"]
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    val_count = sum(s["samples"] for s in manifest["shards"] if s["split"] == "val")
    assert len(set(seen)) == val_count  # every sample; a rank left without one repeats a batch (DDP needs equal steps)
    assert results[0]["val_batches"] == results[1]["val_batches"] >= 1
