"""Shard sets read from where they are served (http on 127.0.0.1, a pipe: command), with and without the node-local
cache; a shard that cannot be opened or that changed is named, skipped and the epoch goes on."""

import functools
import http.server
import logging
import shutil
import threading

import pytest

from recon3d.data.loading.datamodule import ShardDataModule
from recon3d.data.loading.remote import cache_folder
from recon3d.data.loading.shards import load_manifest, read_tar


def _dm(location, **kw):
    kw = {"batch_size": 2, "num_workers": 0, "point_resolution": 8, "rank": 0, "world_size": 1, **kw}
    dm = ShardDataModule(shards=str(location), **kw)
    dm.setup()
    return dm


@pytest.fixture
def served(tiny_shards, tmp_path):
    """tiny_shards copied and served over http on 127.0.0.1 (loopback only); yields (folder, base URL)."""
    if shutil.which("curl") is None:  # webdataset opens http(s) through curl
        pytest.skip("curl is not installed")
    folder = tmp_path / "served"
    shutil.copytree(tiny_shards, folder)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _val_keys(dm):
    return sorted(k for b in dm.val_dataloader() for k in b["key"])


def test_a_pipe_location_streams_the_same_samples(tiny_shards):
    local, piped = _dm(tiny_shards), _dm(f"pipe:cat {tiny_shards}/{{file}}", train_samples_per_epoch=8)
    assert piped.manifest == local.manifest
    assert _val_keys(piped) == _val_keys(local)
    stream = piped.train_dataloader().dataset
    assert stream.readers is None and len([b for b in piped.train_dataloader()]) == 4  # streamed, no index


def test_http_with_a_cache_copies_checks_and_then_reads_locally(served, tmp_path):
    folder, url = served
    cache = tmp_path / "cache"
    dm = _dm(url, cache_dir=str(cache), train_samples_per_epoch=8)
    assert len([b for b in dm.train_dataloader()]) == 4
    assert dm.train_dataloader().dataset.readers is not None  # the cached copies come with their index
    copied = cache_folder(cache, url)
    trains = [s for s in load_manifest(folder)["shards"] if s["split"] == "train"]
    assert all((copied / f"{s['name']}.tar").read_bytes() == (folder / f"{s['name']}.tar").read_bytes()
               for s in trains)
    assert _val_keys(dm) == _val_keys(_dm(folder))
    assert not list(copied.glob("*.tmp"))  # no temp copy left behind


def test_a_remote_shard_that_changed_or_is_gone_is_named_and_skipped(served, tmp_path, caplog):
    folder, url = served
    trains = [s["name"] for s in load_manifest(folder)["shards"] if s["split"] == "train"]
    changed = folder / f"{trains[0]}.tar"
    data = bytearray(changed.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes: rewritten on the server after the manifest was made
    changed.write_bytes(bytes(data))
    (folder / f"{trains[1]}.tar").unlink()
    with caplog.at_level(logging.WARNING, logger="recon3d.data"):
        cached = _dm(url, cache_dir=str(tmp_path / "cache"), train_samples_per_epoch=4)
        infos = cached.shard_infos("train")
    assert {i.path.rsplit("/", 1)[-1] for i in infos} == {f"{n}.tar" for n in trains[2:]}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"{trains[0]}.tar" in messages and "sha256" in messages and f"{trains[1]}.tar" in messages
    if len(trains) > 2:
        assert len([b for b in cached.train_dataloader()]) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recon3d.data"):  # no cache: named when the stream reaches it
        seen = {k for b in _dm(url).split_dataloader("train", surface=False) for k in b["key"]}
    assert {k for n in trains[2:] for k in read_tar(folder / f"{n}.tar")} <= seen
    assert any(f"{trains[1]}.tar" in r.getMessage() for r in caplog.records)


def test_a_brace_expanded_shard_list_trains_on_the_listed_shards_only(tiny_shards):
    trains = [s for s in load_manifest(tiny_shards)["shards"] if s["split"] == "train"]
    assert len(trains) >= 2
    listed = f"{tiny_shards}/train-{{000000..{len(trains) - 2:06d}}}.tar"  # all train shards but the last
    keys = {k for s in trains[:-1] for k in read_tar(tiny_shards / f"{s['name']}.tar")}
    for location in (listed, f"pipe:cat {listed}"):
        dm = _dm(location, train_samples_per_epoch=8)
        assert {i.path.rsplit("/", 1)[-1] for i in dm.shard_infos("train")} == {f"{s['name']}.tar" for s in trains[:-1]}
        assert {k for b in dm.train_dataloader() for k in b["key"]} <= keys
        assert _val_keys(dm) == _val_keys(_dm(tiny_shards))  # splits the list does not name keep all their shards
    with pytest.raises(ValueError, match="train-000099"):
        _dm(f"{tiny_shards}/train-{{000000,000099}}.tar")
