"""Object storage end to end against a local S3 server (moto's, on 127.0.0.1): shards built into a bucket, an
autoencoder trained from it into a run folder in the bucket (and resumed from there), latents exported to it, an
image encoder trained on them, and an evaluation of the bucket's run written back to it."""

import json
import os
import time

import pytest

from tests.conftest import free_port, tiny_config

pytest.importorskip("s3fs", reason="the s3 extra: pip install 'recon3d[s3]'")
pytest.importorskip("moto", reason="moto's S3 server is in the dev extra")

BUCKET = "recon3d-test"


@pytest.fixture()
def s3(launch, monkeypatch, tmp_path):
    """A moto S3 server on 127.0.0.1 with one bucket; the environment points s3fs (and subprocesses) at it."""
    import fsspec

    port = free_port()
    moto = os.path.join(os.path.dirname(launch.python), "moto_server")
    with open(tmp_path / "moto.log", "wb") as log:
        server = launch.popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fsspec.config.conf.pop("s3", None)
    deadline = time.time() + 60
    while True:
        try:
            fs = fsspec.filesystem("s3", skip_instance_cache=True)
            fs.mkdir(BUCKET)
            break
        except Exception:
            if time.time() > deadline or server.poll() is not None:
                raise
            time.sleep(0.5)
    yield fs
    server.terminate()
    server.wait(timeout=30)


def test_shards_runs_latents_and_evaluations_live_in_a_bucket(s3, tiny_meshes, tmp_path, launch, monkeypatch):
    from recon3d.data.writing.writer import build_shards
    from recon3d.inference.autoencoder import export_latents
    from recon3d.storage import fetched
    from recon3d.training.run import run

    monkeypatch.setenv("RECON3D_CACHE", str(tmp_path / "cache"))  # mirrors kept here, not in the system's temp
    shards, run_url = f"s3://{BUCKET}/shards", f"s3://{BUCKET}/runs/ae"
    result = build_shards(tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={shards}",
                                      "shards.samples_per_shard=2", "shards.split=[0.5,0.25,0.25]"), progress=False)
    names = {p.rsplit("/", 1)[1] for p in s3.find(f"{BUCKET}/shards")}
    assert {"manifest.json", "rejects.jsonl"} <= names and sum(n.endswith(".tar") for n in names) == \
        len(result.manifest["shards"]) and not any(n.endswith((".lock", ".tmp")) for n in names)
    assert f"shards: {shards}" in result.summary
    verify = launch.recon3d("shards", "verify", shards, timeout=300)
    assert verify.returncode == 0 and ": OK" in verify.stdout, verify.stdout + verify.stderr
    summary = launch.recon3d("shards", "summary", shards, timeout=300)
    assert f"shards: {shards}" in summary.stdout and "categories: car 4, chair 4, table 4" in summary.stdout, \
        summary.stdout + summary.stderr

    base = [f"loader.shards={shards}", f"loader.cache_dir={tmp_path / 'node-cache'}", "train.accelerator=cpu",
            f"train.run_dir={run_url}", "loader.train_samples_per_epoch=8"]
    first = run(tiny_config(*base, "train.phase_epochs=[1,1]"), enable_wandb=False, enable_progress_bar=False)
    assert first.location == run_url and first.global_step > 0
    assert s3.exists(f"{BUCKET}/runs/ae/checkpoints/last.ckpt")
    saved = json.loads(s3.cat(f"{BUCKET}/runs/ae/config.json"))
    assert saved["train"]["run_dir"] == run_url
    (tmp_path / "node-cache").rename(tmp_path / "elsewhere")  # another node: nothing local, all from the bucket
    second = run(tiny_config(*base, "train.phase_epochs=[1,2]"), enable_wandb=False, enable_progress_bar=False)
    assert second.global_step > first.global_step and second.epoch == first.epoch + 1  # resumed from the bucket

    local_run = fetched(run_url)
    latents = export_latents(str(local_run / "checkpoints" / "last.ckpt"), shards, name="ae")
    assert latents == f"{shards}/latents/ae" and s3.exists(f"{BUCKET}/shards/latents/ae/latents.json")
    svr = run(tiny_config(f"loader.shards={shards}", f"train.run_dir={tmp_path / 'svr'}", "train.stage=svr",
                          f"svr.autoencoder_ckpt={local_run / 'checkpoints' / 'last.ckpt'}", "svr.latents=" + latents,
                          "svr.base_width=4", "svr.epochs=1", "loader.train_samples_per_epoch=4",
                          "train.accelerator=cpu"), enable_wandb=False, enable_progress_bar=False)
    assert svr.global_step > 0 and "val/iou" in svr.metrics

    evaluated = launch.recon3d("eval", "--ckpt", run_url, "--shards", shards, "--split", "test", "--device", "cpu",
                               timeout=300)
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-3000:]
    assert f"tables: {run_url}/eval/eval_autoencoder_test.csv" in evaluated.stdout  # not the local mirror's path
    table = json.loads(s3.cat(f"{BUCKET}/runs/ae/eval/eval_autoencoder_test.json"))
    assert table and not s3.exists(f"{BUCKET}/runs/ae/eval/eval_autoencoder_test.json.tmp")
