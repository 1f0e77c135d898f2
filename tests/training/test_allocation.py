"""The accelerator follows the machine: shipped configs leave it at auto, and a run, a demo or a sweep whose config
would train on the CPU of a GPU job (or asks for CUDA where there is none) stops before any work, in one line."""

import pytest

from recon3d.cli.main import main
from recon3d.config import load_config
from recon3d.errors import ConfigError
from recon3d.training.allocation import allocated_gpus, check_accelerator, check_trial_gpus
from tests.conftest import REPO, TINY, tiny_config


@pytest.mark.parametrize("environ, expected", [
    ({"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, (4, "SLURM_GPUS_ON_NODE=4")),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, (2, "CUDA_VISIBLE_DEVICES=0,1")),
    ({"CUDA_VISIBLE_DEVICES": "GPU-5f3e0c1a"}, (1, "CUDA_VISIBLE_DEVICES=GPU-5f3e0c1a")),
    ({"CUDA_VISIBLE_DEVICES": ""}, (0, "")), ({"CUDA_VISIBLE_DEVICES": "-1"}, (0, "")),
    ({"SLURM_GPUS_ON_NODE": "0"}, (0, "")), ({}, (0, "")),
])
def test_the_gpus_a_job_was_given(environ, expected):
    assert allocated_gpus(environ) == expected


def test_a_cpu_config_in_a_gpu_job_and_cuda_without_a_gpu_are_refused_naming_both():
    cpu, gpu, auto = (tiny_config(f"train.accelerator={a}") for a in ("cpu", "gpu", "auto"))
    with pytest.raises(ConfigError, match=r"train.accelerator=cpu, but this job was given 4 GPU\(s\) "
                                          r"\(SLURM_GPUS_ON_NODE=4\)"):
        check_accelerator(cpu, {"SLURM_GPUS_ON_NODE": "4"}, cuda_available=True)
    with pytest.raises(ConfigError, match=r"train.accelerator=gpu, but no CUDA device is visible here "
                                          r"\(CUDA_VISIBLE_DEVICES=\(unset\)\)"):
        check_accelerator(gpu, {}, cuda_available=False)
    for environ, cuda in (({"SLURM_GPUS_ON_NODE": "4"}, True), ({}, False)):
        check_accelerator(auto, environ, cuda_available=cuda)  # auto follows the machine
    check_accelerator(cpu, {"CUDA_VISIBLE_DEVICES": ""}, cuda_available=False)  # GPUs hidden: the CPU is asked for
    check_accelerator(gpu, {"CUDA_VISIBLE_DEVICES": "0"}, cuda_available=True)


def test_train_and_demo_stop_before_any_work(tiny_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    run_dir = tmp_path / "run"
    assert main(["train", "-c", str(TINY), "--shards", str(tiny_shards), "--run-dir", str(run_dir),
                 "train.accelerator=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.accelerator=cpu" in err and "CUDA_VISIBLE_DEVICES=0,1" in err
    assert not run_dir.exists()
    out = tmp_path / "demo"
    assert main(["demo", "-c", str(TINY), "--out", str(out), "--no-progress", "train.phase_fractions=[1,1]",
                 "train.accelerator=cpu"]) == 2
    assert "train.accelerator=cpu" in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine has no CUDA device: asking for one is refused
    assert main(["train", "-c", str(TINY), "--shards", str(tiny_shards), "--run-dir", str(run_dir),
                 "train.accelerator=gpu"]) == 2
    assert "no CUDA device is visible here" in capsys.readouterr().err and not run_dir.exists()


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "sweep"),
                         ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_no_shipped_config_pins_the_cpu(path):
    """On a machine with a GPU every shipped config trains on it (the tests pin the CPU in their own overrides)."""
    assert load_config([path]).train.accelerator == "auto"


def test_a_sweep_whose_trials_get_gpus_must_not_train_on_the_cpu(tmp_path, tiny_shards):
    from recon3d.training.sweep import trial_resources
    from recon3d.training.sweep_file import load_sweep
    from tests.conftest import tiny_sweep_file

    assert trial_resources({"cpu": 2, "gpu": "auto"}, cluster_gpus=8) == {"cpu": 2.0, "gpu": 1.0}
    assert trial_resources({"cpu": 2, "gpu": "auto"}, cluster_gpus=0) == {"cpu": 2.0}
    assert trial_resources({"cpu": 1, "gpu": 0.5}, cluster_gpus=0) == {"cpu": 1.0, "gpu": 0.5}
    with pytest.raises(ConfigError, match=r"gives each trial 1 GPU\(s\) \(resources.gpu\) but its config trains on "
                                          r"the CPU"):
        load_sweep(tiny_sweep_file(tmp_path / "a.yaml", tiny_shards, search_space={"train.lr": {"grid": [1e-3]}},
                                   resources={"cpu": 1, "gpu": 1}))  # tiny_sweep_file's overrides pin the CPU
    with pytest.raises(ConfigError, match="resources.gpu='two'"):
        load_sweep(tiny_sweep_file(tmp_path / "b.yaml", tiny_shards, search_space={"train.lr": {"grid": [1e-3]}},
                                   resources={"cpu": 1, "gpu": "two"}))
    with pytest.raises(ConfigError, match="gives each trial no GPU"):
        check_trial_gpus(tiny_config("train.accelerator=gpu"), 0)


def test_deepspeed_on_auto_takes_the_cpu_variant_where_there_is_no_gpu():
    pytest.importorskip("deepspeed", reason="the deepspeed extra")
    from recon3d.training.build import build_strategy

    strategy = build_strategy(load_config([TINY, REPO / "configs" / "strategy" / "deepspeed-zero2.yaml"]))
    assert strategy.strategy_name == "deepspeed_cpu"
