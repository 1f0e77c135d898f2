"""What installing recon3d into someone else's environment relies on: ranges (not pins) in pyproject, the tested
versions in constraints.txt, configs and templates installed with the package and found from any folder."""

import re

import pytest
import tomllib

from recon3d.config import SHIPPED, config_file, load_config
from recon3d.errors import ConfigError
from tests.conftest import REPO


def _requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_pyproject_takes_ranges_and_constraints_pin_what_ci_tests():
    requirements = _requirements()
    assert not [r for r in requirements if "==" in r]  # an exact pin would replace a site's torch or Lightning
    assert {"torch", "lightning", "wandb", "deepspeed", "ray"} <= {_name(r) for r in requirements}
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert {"torch", "lightning", "wandb", "deepspeed", "ray", "omegaconf", "webdataset"} <= set(pins)
    assert set(pins) <= {_name(r) for r in requirements}  # nothing pinned that is not asked for


def test_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_file("configs/tiny.yaml") == SHIPPED / "tiny.yaml"
    assert config_file("train/cpu-small.yaml") == SHIPPED / "train" / "cpu-small.yaml"
    (tmp_path / "tiny.yaml").write_text("train:\n  lr: 0.5\n")  # the working folder comes first
    assert load_config(["tiny.yaml"]).train.lr == 0.5
    with pytest.raises(ConfigError, match=r"config file not found: nope\.yaml \(looked in: \."):
        load_config(["nope.yaml"])


def test_a_file_named_in_a_config_is_found_from_that_configs_folder(tmp_path, monkeypatch):
    (tmp_path / "site" / "ds").mkdir(parents=True)
    (tmp_path / "site" / "ds" / "mine.json").write_text('{"zero_optimization": {"stage": 2}}')
    (tmp_path / "site" / "zero2.yaml").write_text("train:\n  strategy: deepspeed_stage_2\n"
                                                  "  deepspeed_config: ds/mine.json\n")
    monkeypatch.chdir(REPO.parent)
    cfg = load_config([tmp_path / "site" / "zero2.yaml"])
    assert cfg.train.deepspeed_config == str(tmp_path / "site" / "ds" / "mine.json")
    shipped = load_config(["configs/strategy/deepspeed-zero2.yaml"]).train.deepspeed_config
    assert shipped == str(SHIPPED / "deepspeed" / "zero2.json")


def test_make_setup_takes_the_cpu_wheel_index_it_is_given(tmp_path):
    """`make setup TORCH_INDEX=URL` asks that index for torch (a laptop whose pip would take PyPI's CUDA build);
    without it pip's own configuration decides."""
    import subprocess

    def torch_line(*extra):
        done = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}", *extra], cwd=REPO,
                              capture_output=True, text=True, check=True)
        return next(line for line in done.stdout.splitlines() if "torch==" in line)

    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in \
        torch_line("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert "--index-url" not in torch_line()


def test_the_wheel_installs_beside_the_environments_torch_and_lightning(tmp_path, launch):
    """As the GPU proof installs it on a bare GPU image: recon3d's wheel with --no-deps into a folder of its own,
    the environment's torch and Lightning untouched, and the installed package complete (configs, templates, the
    report's viewer) and runnable from anywhere."""
    import sys

    versions = "import importlib.metadata as m; print(m.version('torch'), m.version('lightning'))"
    before = launch.python_script(versions, check=True).stdout
    import shutil

    wheels, site, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    source.mkdir()  # a copy: a build writes build/ and *.egg-info beside the sources, never into the repository
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "recon3d", source / "recon3d", ignore=shutil.ignore_patterns("__pycache__"))
    launch.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                str(source)], check=True, capture_output=True)
    [wheel] = wheels.glob("recon3d-*.whl")
    launch.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                str(wheel)], check=True, capture_output=True)
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "recon3d"]  # + script
    for member in ("configs/demo.yaml", "configs/train/cpu-small.yaml", "configs/deepspeed/zero2.json",
                   "cluster/templates/train.sbatch", "cluster/templates/README.md",
                   "workflows/vendor/model-viewer-umd.min.js"):
        assert (site / "recon3d" / member).is_file(), member
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    where = launch.python_script("import recon3d; print(recon3d.__file__)", cwd=tmp_path, env=env, check=True)
    assert where.stdout.strip() == str(site / "recon3d" / "__init__.py")
    assert launch.python_script(versions, check=True, env=env).stdout == before
    shown = launch.run([sys.executable, "-m", "recon3d", "slurm", "template", "train"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.strip() == str(site / "recon3d" / "cluster" / "templates" /
                                                                 "train.sbatch")
