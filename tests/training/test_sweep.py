"""Ray Tune sweeps and Ray shard writing, on a local Ray started for this module (no dashboard, no network)."""

import csv
import json

import pytest
import yaml

from recon3d.cli.main import main
from recon3d.config import load_config
from tests.conftest import REPO, TINY, tiny_config, tiny_sweep_file

ray = pytest.importorskip("ray", reason="Ray is installed with the dev extra: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def local_ray(launch):
    """Ray on this machine for the module's Ray tests (its processes make them system tests)."""
    from recon3d.data.writing.executors import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_shards_built_with_ray_match_the_process_pool_byte_for_byte(tiny_meshes, tmp_path, local_ray):
    from recon3d.data.writing.writer import build_shards

    pool = build_shards(tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={tmp_path / 'pool'}",
                                    "shards.workers=2"), progress=False)
    with_ray = build_shards(tiny_config(f"source.root={tiny_meshes}", f"shards.out_dir={tmp_path / 'ray'}",
                                        "shards.workers=2"), progress=False, use_ray=True)
    assert with_ray.manifest == pool.manifest
    for tar in (tmp_path / "pool").glob("*.tar"):
        assert (tmp_path / "ray" / tar.name).read_bytes() == tar.read_bytes()


def test_four_trial_sweep_writes_the_best_config_and_resumes(tiny_shards, tmp_path, capsys, local_ray):
    sweep = tiny_sweep_file(tmp_path / "tiny-sweep.yaml", tiny_shards, scheduler="asha", num_samples=4, search_space={
        "train.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "model.latent_dim": {"choice": [8, 16]}})
    assert main(["sweep", "-c", str(sweep)]) == 0
    folder = tmp_path / "sweeps" / "tiny-sweep"
    trials = json.loads((folder / "trials.json").read_text())
    assert len(trials) == 4 and all(t["val/iou"] is not None for t in trials)
    for t in trials:  # each trial's figure is its best validation (what the best trial is chosen by), not its last
        logged = [float(r["val/iou"]) for m in (folder / "trials" / t["trial"]).glob("logs/*/metrics.csv")
                  for r in csv.DictReader(m.open()) if r.get("val/iou")]
        assert t["val/iou"] == pytest.approx(max(logged)) and t["last"] <= t["val/iou"]
    assert len({t["params"]["train.lr"] for t in trials}) == 4
    for trial in (folder / "trials").iterdir():  # each trial is a normal run folder
        assert (trial / "checkpoints" / "last.ckpt").is_file() and (trial / "config.json").is_file()
    best = load_config([TINY, folder / "best.yaml"])  # the best overrides load as a config file
    assert best.model.latent_dim in (8, 16)
    assert json.loads((folder / "best_config.json").read_text())["train"]["lr"] == best.train.lr
    assert "best (val/iou" in capsys.readouterr().out
    assert main(["sweep", "-c", str(sweep)]) == 0  # finished: a rerun restores the experiment, trains nothing
    assert len(json.loads((folder / "trials.json").read_text())) == 4


def test_sweep_file_errors_name_the_key(tmp_path):
    from recon3d.errors import ConfigError
    from recon3d.training.sweep_file import load_sweep

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": [str(TINY)], "search_space": {"train.lrr": {"choice": [1, 2]}}}))
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_sweep(bad)
    bad.write_text(yaml.safe_dump({"search_space": {"train.lr": {"normal": [1, 2]}}}))
    with pytest.raises(ConfigError, match="search_space.train.lr"):
        load_sweep(bad)


def test_a_vrn_sweep_runs_with_the_stages_own_metric(stereo_shards, tmp_path, capsys, monkeypatch, local_ray):
    """Sweeps look epochs and the default metric up in the stage table (a vrn base raised KeyError('vrn')); the
    shards are named relative to the folder the sweep starts in, as the README's sweeps do (trials run elsewhere)."""
    from tests.conftest import VRN_TINY

    sweep = tiny_sweep_file(tmp_path / "vrn-sweep.yaml", stereo_shards, scheduler="fifo", num_samples=2,
                            search_space={"vrn.lr": {"choice": [0.003, 0.001]}},
                            overrides=["train.logger=csv", *VRN_TINY])
    spec = yaml.safe_load(sweep.read_text())
    del spec["metric"], spec["mode"]  # the stage's best-by metric is the default
    spec["overrides"] = [o for o in spec["overrides"] if not o.startswith("loader.shards=")]
    sweep.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(stereo_shards.parent)
    assert main(["sweep", "-c", str(sweep), f"loader.shards={stereo_shards.name}"]) == 0
    trials = json.loads((tmp_path / "sweeps" / "vrn-sweep" / "trials.json").read_text())
    assert len(trials) == 2 and all(t["val/iou"] is not None for t in trials)
    assert "best (val/iou" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "sweep").glob("*.yaml")))
def test_every_shipped_sweep_file_loads(name):
    """Each value of each search space is probed against the config (a renamed key fails here, naming it)."""
    from recon3d.training.sweep_file import load_sweep

    spec = load_sweep(REPO / "configs" / "sweep" / name)
    assert spec.search_space and spec.metric and spec.mode in ("min", "max")


def test_local_ray_talks_and_listens_on_loopback_only(local_ray):
    """The local Ray that sweeps and Ray shard writing start: its node address is 127.0.0.1 and none of its
    processes listens on any other address (Ray left alone takes the machine's routed address and binds to all)."""
    import ipaddress

    import psutil

    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    assert ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote()) == "127.0.0.1"  # in a worker too
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    ray_pids = {p.pid for p in psutil.process_iter(["cmdline"]) if session in " ".join(p.info["cmdline"] or ())}
    ray_pids |= {child.pid for pid in ray_pids for child in psutil.Process(pid).children(recursive=True)}
    listening = [c.laddr for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ray_pids]
    assert listening, "found no Ray process listening"
    addresses = {ipaddress.ip_address(address.ip) for address in listening}
    assert all(a.is_loopback or getattr(a, "ipv4_mapped", None) and a.ipv4_mapped.is_loopback for a in addresses), \
        addresses


def test_local_ray_leaves_its_single_machine_mode_out_of_the_environment(local_ray):
    """The mode is for the local Ray's own daemons: left in os.environ it reached every process started later, and a
    two-node SLURM sweep submitted after a local sweep in the same process ran both trials on one node (its second
    node's Ray worker, in single-machine mode, joined no cluster)."""
    import os

    from recon3d.data.writing.executors import RAY_LOCAL_ONLY

    assert RAY_LOCAL_ONLY not in os.environ


def _spec(**fields):
    from recon3d.training.sweep_file import SweepSpec

    return SweepSpec(**{"search_space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}, "metric": "val/iou",
                        "mode": "max", **fields})


def test_schedulers_count_epochs_trained_in_max_t_and_rungs_alike():
    """A stage validated every 5 of its 100 epochs: ASHA's rungs and max_t are both epochs (with Tune's default count
    of reports the rungs sat at 5, 10, 20 epochs and max_t 100 reports was never reached)."""
    from recon3d.training.sweep import PROGRESS, scheduler

    asha = scheduler(_spec(scheduler="asha"), max_t=100, first=5)
    assert asha._time_attr == PROGRESS and asha._max_t == 100
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [80, 40, 20, 10, 5]
    median = scheduler(_spec(scheduler="median"), max_t=100, first=5)
    assert median._time_attr == PROGRESS and median._grace_period == 5
    assert scheduler(_spec(scheduler="hyperband"), max_t=100)._time_attr == PROGRESS


def test_the_search_is_seeded_by_the_sweep_files_seed():
    from ray import tune

    from recon3d.training.sweep import searcher

    space = {"train.lr": tune.loguniform(1e-4, 1e-2), "model.latent_dim": tune.choice([8, 16, 32])}

    def draws(seed):
        search = searcher(_spec(search="optuna", seed=seed))
        search.set_search_properties("val/iou", "max", space)
        return [search.suggest(f"t{i}") for i in range(4)]

    assert draws(3) == draws(3) and draws(3) != draws(4)
    assert type(searcher(_spec(search="optuna"))).__name__ == "OptunaSearch"
    assert searcher(_spec(search="optuna", startup_trials=3))._sampler._n_startup_trials == 3  # TPE from trial 4
    assert type(searcher(_spec(search="random"))).__name__ == "BasicVariantGenerator"


@pytest.mark.parametrize("search, space, message", [
    ("optuna", {"train.lr": {"grid": [0.1, 0.2]}}, "grid under search=optuna"),
    ("grid", {"train.lr": {"choice": [0.1, 0.2]}}, "choice under search=grid"),
    ("bayes", {"train.lr": {"choice": [0.1, 0.2]}}, "search='bayes': one of")])
def test_a_search_that_cannot_take_its_space_is_named(tmp_path, search, space, message):
    from recon3d.errors import ConfigError
    from recon3d.training.sweep_file import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": [str(TINY)], "search": search, "search_space": space}))
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_optunas_random_start_is_at_least_one_trial(tmp_path):
    from recon3d.errors import ConfigError
    from recon3d.training.sweep_file import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": [str(TINY)], "search": "optuna", "startup_trials": 0,
                                    "search_space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}))
    with pytest.raises(ConfigError, match="startup_trials=0: at least 1"):
        load_sweep(path)


def test_an_optuna_sweep_runs_and_reports_epochs_trained(tiny_shards, tmp_path, local_ray):
    sweep = tiny_sweep_file(tmp_path / "optuna-sweep.yaml", tiny_shards, scheduler="asha", num_samples=3,
                            search="optuna", seed=7, max_concurrent=1,
                            search_space={"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}})
    assert main(["sweep", "-c", str(sweep)]) == 0
    trials = json.loads((tmp_path / "sweeps" / "optuna-sweep" / "trials.json").read_text())
    assert len(trials) == 3 and len({t["params"]["train.lr"] for t in trials}) == 3
    for t in trials:  # Optuna's trial ids (8 hex digits) name the trial folders too
        assert (tmp_path / "sweeps" / "optuna-sweep" / "trials" / t["trial"] / "config.json").is_file(), t
    assert all(t["val/iou"] is not None for t in trials)


@pytest.mark.parametrize("text, message", [
    ("search_space: {train.lr: {choice: [1, 2]}\n", r"not valid YAML \(line 3, column 1\): expected .,. or .}."),
    ("num_samples: 0\nsearch_space: {train.lr: {choice: [1]}}\n", "num_samples=0: at least 1 trial"),
    ("search_space: {train.lr: {loguniform: [1.0e-2]}}\n", r"loguniform takes \[low, high\]"),
    ("search_space: {train.lr: {loguniform: [0, 1]}}\n", "loguniform needs low > 0"),
    ("search_space: {train.lr: {uniform: [0.3, 0.1]}}\n", "low < high"),
    ("search_space: {model.latent_dim: {randint: [8.5, 16]}}\n", "randint takes two integers"),
    ("search_space: {model.latent_dim: {choice: []}}\n", "choice takes a non-empty list")])
def test_a_broken_sweep_file_is_one_line_before_ray_starts(tmp_path, text, message):
    from recon3d.errors import ConfigError
    from recon3d.training.sweep_file import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(f"base: [{TINY}]\n" + text)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_a_sweep_file_that_is_not_a_mapping_is_named(tmp_path):
    from recon3d.errors import ConfigError
    from recon3d.training.sweep_file import load_sweep

    (tmp_path / "s.yaml").write_text("- a list\n- of things\n")
    with pytest.raises(ConfigError, match="s.yaml: a sweep file is a mapping of sweep keys, got list"):
        load_sweep(tmp_path / "s.yaml")


def test_a_trial_bigger_than_the_cluster_is_refused():
    from recon3d.errors import ConfigError
    from recon3d.training.sweep import check_cluster_fits

    check_cluster_fits({"cpu": 2.0}, {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"resources.cpu=4 per trial, but the Ray cluster has 2 CPUs"):
        check_cluster_fits({"cpu": 4.0}, {"CPU": 2.0})
    with pytest.raises(ConfigError, match="resources.gpu=1 per trial, but the Ray cluster has 0 GPUs"):
        check_cluster_fits({"cpu": 1.0, "gpu": 1.0}, {"CPU": 8.0})


def test_a_metric_no_stage_logs_fails_the_sweep_naming_what_it_logs(tiny_shards, tmp_path, local_ray, capsys):
    sweep = tiny_sweep_file(tmp_path / "bad-metric.yaml", tiny_shards, scheduler="fifo", num_samples=1,
                            metric="val/nothing", search_space={"train.lr": {"choice": [1.0e-3]}})
    assert main(["sweep", "-c", str(sweep)]) == 1
    err = capsys.readouterr().err
    assert "no trial reported val/nothing" in err and "does not log it" in err and "val/iou" in err
    assert not (tmp_path / "sweeps" / "bad-metric" / "best.yaml").exists()
