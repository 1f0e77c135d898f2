"""`recon3d shards verify` sees what a build could not: relabelled splits, wrong totals, a shape in two splits."""

import json

from recon3d.data.tools.verify import verify_shards


def test_verify_sees_relabelled_splits_wrong_totals_and_a_shape_in_two_splits(tiny_shards, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("latents"))
    assert verify_shards(shards).ok
    manifest = json.loads((shards / "manifest.json").read_text())
    test = next(s for s in manifest["shards"] if s["split"] == "test")
    train = next(s for s in manifest["shards"] if s["split"] == "train")
    test["split"] = "train"  # a test shard trained on
    manifest["splits"]["val"]["samples"] += 1
    (shards / "manifest.json").write_text(json.dumps(manifest))
    problems = "\n".join(verify_shards(shards).problems)
    assert f"{test['name']}: labelled split 'train'" in problems
    assert "splits.val.samples says" in problems and "splits.train.shards says" in problems
    shutil.copy(shards / f"{train['name']}.tar", shards / f"{test['name']}.tar")  # the same shapes in test
    test.update(split="test", bytes=train["bytes"], sha256=train["sha256"], samples=train["samples"])
    manifest["splits"]["val"]["samples"] -= 1
    manifest["splits"]["test"]["samples"] = sum(s["samples"] for s in manifest["shards"] if s["split"] == "test")
    (shards / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_shards(shards).problems
    assert any("(train/test leakage)" in p for p in problems), problems
