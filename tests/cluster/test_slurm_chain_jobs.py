"""The other templates on the two-node test bed: a shards array spread over both nodes, a Ray Tune sweep with its
head on node1 and a worker on node2, and the whole method as a chain of dependent jobs."""

import ipaddress
import json
import shutil
import time

import pytest

from recon3d.data.writing.writer import build_shards
from tests.cluster.conftest import job_env, job_log, recording_launcher
from tests.conftest import GAN_TINY, REPO, TINY, free_port, tiny_config, tiny_sweep_file

pytestmark = pytest.mark.slurm


def test_shards_array_over_two_nodes_is_byte_identical_to_one_process(cluster, tiny_meshes, tmp_path):
    out = tmp_path / "shards"
    launcher, launched = recording_launcher(tmp_path)
    cluster.sbatch("--array=0-1", "--cpus-per-task=1", "--mem=1G", f"--output={tmp_path}/shards-%A_%a.out",
                   str(REPO / "slurm" / "shards.sbatch"), str(tiny_meshes), str(out), "-c", str(TINY),
                   "shards.samples_per_shard=2", cwd=tmp_path, env=job_env(**launcher))
    deadline = time.time() + 400
    while time.time() < deadline and not (out / "manifest.json").is_file():
        time.sleep(1)
    cluster.idle(timeout=max(10.0, deadline - time.time()))  # the merge job's verify step
    logs = job_log(tmp_path, "shards-*.out") + job_log(out, "merge-*.log")
    assert (out / "manifest.json").is_file(), logs[-4000:]
    assert "part 0/2 on node1" in logs and "part 1/2 on node2" in logs, logs[-4000:]
    assert ": OK" in job_log(out, "merge-*.log"), logs[-4000:]
    one = build_shards(tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={tmp_path / 'one'}",
                                   "shards.samples_per_shard=2"), progress=False).manifest
    array = json.loads((out / "manifest.json").read_text())
    assert array["samples"] == 12 and array["shards"] == one["shards"]  # names, counts, sizes and sha256
    steps = launched.read_text().splitlines()  # both parts, the merge's build and its verify, each through it
    assert sum(" recon3d shards build " in f" {line} " and "--part" in line for line in steps) == 2, steps
    assert {line.split()[0] for line in steps if "--part" in line} == {"node1", "node2"}, steps
    assert any(" recon3d shards verify " in f" {line} " for line in steps), steps


@pytest.mark.parametrize("scheduler", ["fifo", "pbt"])
def test_sweep_over_two_nodes_places_trials_on_both(cluster, tiny_shards, tmp_path, scheduler):
    """PBT too: its trials copy each other's checkpoints across the nodes (through the sweep's shared storage)."""
    pytest.importorskip("ray", reason="Ray is installed with the dev extra")
    sweep = tiny_sweep_file(tmp_path / "two-node-sweep.yaml", tiny_shards,
                            *(["train.phase_epochs=[2,3]"] if scheduler == "pbt" else []), scheduler=scheduler,
                            num_samples=2, search_space={"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
                            **({"metric": "val/loss", "mode": "min", "synch": True}  # no ties; both compared
                               if scheduler == "pbt" else {}))
    launcher, launched = recording_launcher(tmp_path)
    job = cluster.sbatch("--nodes=2", "--cpus-per-task=1", "--mem=2G", f"--output={tmp_path}/sweep-%j.out",
                         str(REPO / "slurm" / "sweep.sbatch"), "-c", str(sweep), cwd=tmp_path,
                         env=job_env(RAY_PORT=str(free_port()), **launcher))
    state = cluster.wait(job, timeout=500)[job]
    log = job_log(tmp_path, "sweep-*.out")
    assert state == "COMPLETED", log[-4000:]
    assert "Ray head on node1" in log and "2 node(s)" in log
    folder = tmp_path / "sweeps" / "two-node-sweep"
    trials = json.loads((folder / "trials.json").read_text())
    metric = "val/loss" if scheduler == "pbt" else "val/iou"
    assert len(trials) == 2 and all(t[metric] is not None for t in trials)
    reports = [json.loads(line) for result in (folder / "tune").glob("trial_*/result.json")
               for line in result.read_text().splitlines()]
    assert {r["host"] for r in reports} == {"node1", "node2"}, trials  # one 1-CPU trial per 1-CPU node
    assert all(ipaddress.ip_address(t["node_ip"]).is_loopback for t in trials), trials  # Ray talked on loopback
    assert (folder / "best.yaml").is_file()
    if scheduler == "pbt":
        starts = [json.loads(line) | {"trial": trial.name} for trial in (folder / "trials").iterdir()
                  if (trial / "pbt.jsonl").is_file() for line in (trial / "pbt.jsonl").read_text().splitlines()]
        assert any(start["copied_trial"] != start["trial"] for start in starts), starts
    steps = launched.read_text().splitlines()  # the Ray head, the worker and the driver, each through the launcher
    assert {(line.split()[0], " ".join(line.split()[2:4])) for line in steps} >= {
        ("node1", "ray start"), ("node2", "ray start"), ("node1", "recon3d sweep")}, steps


def test_pipeline_submits_the_chain_as_dependent_jobs(cluster, tiny_shards, tmp_path, launch):
    shards = tmp_path / "shards"  # the chain exports latents beside the shards: not into the shared fixture
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("latents"))
    out = tmp_path / "chain"
    overrides = ["train.accelerator=cpu", "loader.train_samples_per_epoch=8", "svr.base_width=4", "svr.epochs=1",
                 *GAN_TINY]
    done = launch.run(["recon3d", "slurm", "pipeline", "-c", str(TINY), "--shards", str(shards), "--out", str(out),
                       "--cpus-per-task=1", "--stages", "autoencoder,svr,gan", *overrides], capture_output=True,
                      text=True, cwd=tmp_path, env={**cluster.env, **job_env()})
    assert done.returncode == 0, done.stderr
    jobs = dict(line.split() for line in done.stdout.splitlines())
    assert list(jobs) == ["autoencoder", "latents", "svr", "gan", "eval"]
    assert "afterok:" + jobs["latents"] in cluster.job(int(jobs["svr"])).get("Dependency", "")
    states = cluster.wait(*map(int, jobs.values()), timeout=900)
    logs = job_log(out / "logs", "*.out")
    assert set(states.values()) == {"COMPLETED"}, (states, logs[-5000:])
    for stage in ("autoencoder", "svr", "gan"):
        assert list((out / "eval" / stage).glob("*.json")), logs[-3000:]
    assert (shards / "latents" / "autoencoder").is_dir()
