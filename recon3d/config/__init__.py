"""The configuration: a typed schema (dataclasses, a default and a one-line comment per field) and load_config.

    cfg = load_config(["configs/train/cpu-small.yaml"], ["train.lr=1e-4"])  # YAML files, then key=value overrides

data.py holds the data sections (source, geometry, render, shards), training.py the loader, the models and the
trainer, schema.py the whole Config, loading.py load_config and with_overrides (the only omegaconf user). Everything
a caller needs is importable from recon3d.config.
"""

from recon3d.config.data import AXES, SOURCE_KINDS, VOXEL_RULES, GeometryConfig, RenderConfig, ShardConfig, SourceConfig
from recon3d.config.loading import SHIPPED, config_file, load_config, to_dict, with_overrides
from recon3d.config.schema import DEMO_JOB_SHARES, SAFE_GLOBALS, Config, DemoConfig, demo_shares
from recon3d.config.training import (
    LOADER_PIPELINES,
    LR_SCHEDULES,
    PRECISIONS,
    GANConfig,
    LoaderConfig,
    ModelConfig,
    StereoConfig,
    SVRConfig,
    TrainConfig,
    VRNConfig,
)

__all__ = ["AXES", "SOURCE_KINDS", "VOXEL_RULES", "GeometryConfig", "RenderConfig", "ShardConfig", "SourceConfig",
           "SHIPPED", "config_file", "load_config", "to_dict", "with_overrides", "DEMO_JOB_SHARES", "SAFE_GLOBALS",
           "Config", "DemoConfig", "demo_shares", "LOADER_PIPELINES", "LR_SCHEDULES", "PRECISIONS", "GANConfig",
           "LoaderConfig", "ModelConfig", "StereoConfig", "SVRConfig", "TrainConfig", "VRNConfig"]
