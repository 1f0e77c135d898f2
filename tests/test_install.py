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
