from dataclasses import fields, is_dataclass

import pytest

from recon3d.config import Config, load_config, to_dict
from recon3d.errors import ConfigError
from tests.conftest import REPO

CONFIG_FILES = [p for p in sorted((REPO / "configs").rglob("*.yaml")) if p.parent.name != "sweep"]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_yaml_loads(path):
    cfg = load_config([path])
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweep").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_loads(path, monkeypatch):
    """Sweep files are checked key by key against the schema (bases resolve from the repository root)."""
    from recon3d.training.sweep_file import load_sweep

    monkeypatch.chdir(REPO)
    spec = load_sweep(path)
    assert spec.search_space and spec.metric


def test_files_merge_left_to_right_then_overrides(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("shards:\n  workers: 3\n  seed: 5\n")
    b.write_text("shards:\n  workers: 4\n")
    cfg = load_config([a, b], ["shards.seed=9"])
    assert cfg.shards.workers == 4 and cfg.shards.seed == 9


def test_typo_names_key_and_suggests():
    with pytest.raises(ConfigError, match=r"geometry.voxel_resolutoin.*did you mean 'voxel_resolution'"):
        load_config([], ["geometry.voxel_resolutoin=32"])


def test_typo_in_file_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("render:\n  veiws: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*render.veiws.*'views'"):
        load_config([bad])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="shards.workers"):
        load_config([], ["shards.workers=many"])


@pytest.mark.parametrize("override, message", [
    ("geometry.fine_resolution=100", "multiple of"),
    ("geometry.voxel_resolution=20", "multiple of 8"),
    ("shards.split=[0.5,0.5,0.5]", "summing to 1"),
    ("source.up_axis=+q", "source.up_axis"),
    ("geometry.point_counts=[1,2]", "same length"),
    ("render.distance_range=[0.5,1.0]", "outside the unit cube"),
    ("train.precision=bf17", "train.precision"),
    ("train.deepspeed_config=configs/deepspeed/zero2.json", "not a DeepSpeed strategy"),
])
def test_cross_field_rules(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], [override])


@pytest.mark.parametrize("accelerator", ["gpu", "cpu"])
def test_strategy_rules_per_stage(accelerator):
    """DeepSpeed serves the one-optimiser stages on GPUs and (the CPU test variant) on CPUs; the GAN is refused."""
    for stage in ("autoencoder", "svr", "vrn", "stereo"):
        load_config([], ["train.strategy=deepspeed_stage_2", f"train.accelerator={accelerator}",
                         f"train.stage={stage}"])
    with pytest.raises(ConfigError, match="takes one; use ddp"):
        load_config([], ["train.strategy=deepspeed_stage_2", f"train.accelerator={accelerator}", "train.stage=gan"])


def test_strategy_files_load_for_the_stages_they_serve():
    for name in ("deepspeed-zero2", "deepspeed-zero3"):
        cfg = load_config([REPO / "configs" / "strategy" / f"{name}.yaml"])
        assert (REPO / cfg.train.deepspeed_config).is_file() and cfg.train.precision == "bf16-mixed"
    with pytest.raises(ConfigError, match="takes one"):
        load_config([REPO / "configs" / "strategy" / "deepspeed-zero2.yaml"], ["train.stage=gan"])


def test_lists_replace_rather_than_merge():
    cfg = load_config([], ["geometry.point_resolutions=[16]", "geometry.point_counts=[100]"])
    assert cfg.geometry.point_resolutions == [16] and cfg.geometry.point_counts == [100]


def test_every_field_has_a_comment():
    """The schema documents itself: each field line carries a trailing comment."""
    import inspect

    def check(cls):
        source = inspect.getsource(cls).splitlines()
        for f in fields(cls):
            line = next(text for text in source if text.strip().startswith(f"{f.name}:"))
            if is_dataclass(f.type if not isinstance(f.type, str) else None):
                continue
            if "default_factory=" in line and f.name in ("source", "geometry", "render", "shards", "loader", "model",
                                                          "svr", "train", "demo"):
                continue
            assert "#" in line, f"{cls.__name__}.{f.name} has no comment"

    for f in fields(Config):
        check(type(getattr(Config(), f.name)))


def test_to_dict_is_json_ready():
    import json

    json.dumps(to_dict(load_config()))


@pytest.mark.parametrize("section, cls, skip", [
    ("model", "recon3d.tasks.autoencoder:AutoencoderTask", set()),
    ("gan", "recon3d.tasks.gan:LatentGANTask", {"latents", "batch_size", "epochs", "samples_per_epoch"}),
    ("svr", "recon3d.tasks.svr:SVRTask", {"latents", "epochs"}),
    ("vrn", "recon3d.tasks.vrn:VRNTask", {"epochs"}),
    ("stereo", "recon3d.tasks.stereo:StereoTask", {"epochs"}),
    ("loader", "recon3d.data.loading.datamodule:ShardDataModule", set()),
])
def test_config_fields_match_constructor_keywords(section, cls, skip):
    """The builder passes these sections straight through: a renamed keyword must fail here, not at run time."""
    import dataclasses
    import importlib
    import inspect

    from recon3d.config import Config

    module, name = cls.split(":")
    keywords = set(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
    section_fields = {f.name for f in dataclasses.fields(getattr(Config(), section))}
    assert section_fields - skip <= keywords, section_fields - skip - keywords


def test_every_field_of_every_section_is_read_somewhere():
    """A field no code reads is a setting that silently does nothing: every field of every section must appear as
    an attribute read (or a keyword, for the sections passed through) outside the config package."""
    import dataclasses
    import re

    from recon3d.config import Config

    source = "\n".join(p.read_text() for p in (REPO / "recon3d").rglob("*.py")
                       if p.relative_to(REPO / "recon3d").parts[0] != "config")
    unread = []
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            if not re.search(rf"(\.{f.name}\b|\b{f.name}=|\"{f.name}\")", source):
                unread.append(f"{section.name}.{f.name}")
    assert not unread, unread


def test_loader_stage_follows_train_stage_unless_set():
    from recon3d.data.loading.datamodule import loader_pipeline
    from recon3d.stages import STAGES

    for stage, row in STAGES.items():
        cfg = load_config([], [f"train.stage={stage}"])
        assert cfg.loader.stage == "" and loader_pipeline(cfg) == (row.loader or cfg.loader.stage)
    assert loader_pipeline(load_config([], ["train.stage=svr", "loader.stage=volume"])) == "volume"
