"""The read side of a shard folder: the first split of an order that holds samples (the demo's evaluation split,
the GAN's automatic reference split)."""

from recon3d.data.loading.shards import first_split


def test_first_split_skips_the_empty_and_the_absent_splits():
    manifest = {"splits": {"train": {"samples": 9}, "val": {"samples": 0}}}
    assert first_split(manifest, ("val", "test", "train")) == "train"
    assert first_split({"splits": {"test": {"samples": 2}, "train": {"samples": 9}}}, ("test", "val")) == "test"
    assert first_split(manifest, ("val", "test")) == ""
