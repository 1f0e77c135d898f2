"""Object storage helpers with a stand-in filesystem (the real S3 round trip is tests/training/test_bucket.py):
what counts as a bucket URL, files sent whole with the completing ones last and unchanged ones skipped, and a mirror
fetching only objects whose version changed."""

from pathlib import Path

import pytest

from recon3d import storage


class FakeBucket:
    """The part of an fsspec filesystem recon3d.storage uses, over a dict {path: (bytes, etag)}."""

    def __init__(self):
        self.objects, self.puts, self.gets = {}, [], []

    def put_file(self, local, url):
        path = url.split("://", 1)[1]
        data = Path(local).read_bytes()
        self.objects[path] = (data, str(hash(data)))
        self.puts.append(path)

    def find(self, root, detail=False):
        return {p: {"size": len(d), "ETag": e} for p, (d, e) in self.objects.items() if p.startswith(root + "/")}

    def get_file(self, path, local):
        Path(local).write_bytes(self.objects[path][0])
        self.gets.append(path)


@pytest.fixture()
def bucket(monkeypatch):
    fake = FakeBucket()
    monkeypatch.setattr(storage, "filesystem", lambda url: fake)
    return fake


def test_bucket_urls_are_told_from_folders_and_other_urls():
    assert storage.is_object_url("s3://b/shards") and storage.is_object_url("gs://b/x")
    for other in ("/data/shards", "runs/ae", "https://host/shards", "pipe:cat {file}", "file:///x"):
        assert not storage.is_object_url(other)
    with storage.mirrored("runs/ae") as local:  # a folder is its own mirror
        assert local == Path("runs/ae")


def test_files_go_whole_the_completing_ones_last_and_unchanged_ones_once(bucket, tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("manifest.json", "train-000000.tar", "train-000000.json", "x.tar.host.1.tmp", ".build-0-of-1.lock"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "b" / "c.npy").write_bytes(b"c")
    sent = {}
    assert storage.upload(tmp_path, "s3://bk/set", sent=sent) == 4
    assert bucket.puts[-1] == "bk/set/manifest.json" and "bk/set/b/c.npy" in bucket.puts
    assert not any(p.endswith((".tmp", ".lock")) for p in bucket.puts)
    assert storage.upload(tmp_path, "s3://bk/set", sent=sent) == 0  # nothing changed
    (tmp_path / "b" / "c.npy").write_bytes(b"cc")
    assert storage.upload(tmp_path, "s3://bk/set", sent=sent, only=("b",)) == 1


def test_a_mirror_fetches_what_changed_and_sends_back_what_it_made(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("RECON3D_CACHE", str(tmp_path / "cache"))
    bucket.objects = {"bk/run/config.json": (b"{}", "1"), "bk/run/checkpoints/last.ckpt": (b"w1", "2")}
    local = storage.fetched("s3://bk/run")
    assert (local / "checkpoints" / "last.ckpt").read_bytes() == b"w1" and len(bucket.gets) == 2
    storage.fetched("s3://bk/run")
    assert len(bucket.gets) == 2  # same versions: nothing fetched again
    bucket.objects["bk/run/checkpoints/last.ckpt"] = (b"w2", "3")
    assert storage.fetched("s3://bk/run") == local and (local / "checkpoints" / "last.ckpt").read_bytes() == b"w2"
    with storage.mirrored("s3://bk/run", only=("eval",)) as mirror:
        assert mirror == local
        (mirror / "eval").mkdir()
        (mirror / "eval" / "t.json").write_text("[]")
        (mirror / "checkpoints" / "last.ckpt").write_bytes(b"changed here")
    assert bucket.puts == ["bk/run/eval/t.json"]  # only what was asked to go back
