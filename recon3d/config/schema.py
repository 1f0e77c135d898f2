"""The whole configuration schema: every section (recon3d/config/data.py, recon3d/config/training.py) and the
demo's own, assembled into Config; the classes torch may rebuild from a checkpoint's hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Dict, List

from recon3d.config.data import GeometryConfig, RenderConfig, ShardConfig, SourceConfig, _check
from recon3d.config.training import (
    GANConfig,
    LoaderConfig,
    ModelConfig,
    StereoConfig,
    SVRConfig,
    TrainConfig,
    VRNConfig,
)
from recon3d.stages import STAGES, demo_steps

# the demo's steps that train nothing, each with its default share of demo.minutes (the training stages' shares are
# their rows' demo_share in recon3d/stages.py): the training stages train until their share is spent, the others
# take what they need and the rest moves on
DEMO_JOB_SHARES = {"meshes": 0.005, "shards": 0.05, "latents": 0.005, "evaluate": 0.04, "report": 0.005}


DEMO_PROFILES = ("auto", "cpu", "gpu")  # demo.profile (recon3d/workflows/demo.py demo_config)


def demo_shares() -> Dict[str, float]:
    """The default share of demo.minutes of every step of the demo, in the order the steps run."""
    return {step: DEMO_JOB_SHARES[step] if step in DEMO_JOB_SHARES else STAGES[step].demo_share
            for step in demo_steps()}


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"  # run folder: meshes/, shards/, one folder per trained stage, report.html
    profile: str = "auto"  # auto: gpu where CUDA is visible (and train.accelerator is not cpu), else cpu | cpu | gpu
    # (gpu: configs/demo-gpu.yaml over demo.yaml; config.json records the profile that ran)
    shapes_per_category: int = 16  # procedural shapes per category
    categories: List[str] = field(default_factory=lambda: ["chair", "table", "lamp", "airplane", "car"])  # shapes made
    samples_per_shard: int = 16  # shard size for the demo (small, so that loaders have several shards to spread)
    minutes: float = 18.0  # the whole demo's time budget, shared among its stages by `shares`
    shares: Dict[str, float] = field(default_factory=demo_shares)  # share of the budget per step (normalised)
    gan_eval_every_epochs: int = 5  # COV/MMD of the GAN every N epochs (each decodes gan.eval_samples shapes)
    eval_resolution: int = 64  # extraction grid of the evaluation's surface metrics
    gan_eval_draws: int = 4  # disjoint sets of 5 GAN samples per test shape: COV's mean, lowest and highest over
    # them (on a few dozen test shapes one set's COV moves by several hundredths with the draw alone)
    sheet_shapes: int = 10  # test shapes shown beside their reconstructions in the report, taken in turn from each
    # category (10: two of each of the five default categories)
    interpolation_steps: int = 8  # shapes on the report's interpolation strip

    def __post_init__(self) -> None:
        _check(self.shapes_per_category >= 1 and self.samples_per_shard >= 1, "demo: counts must be >= 1")
        _check(self.minutes > 0, "demo.minutes must be > 0")
        _check(self.profile in DEMO_PROFILES, f"demo.profile={self.profile!r}: {' | '.join(DEMO_PROFILES)}")
        _check(set(self.shares) <= set(demo_steps()), f"demo.shares: the steps are {', '.join(demo_steps())}")
        _check(min(self.shares.values(), default=0) >= 0 and sum(self.shares.values()) > 0,
               "demo.shares: shares >= 0 with a positive sum (they are normalised to it)")
        _check(self.interpolation_steps >= 2, "demo.interpolation_steps must be >= 2")
        _check(self.gan_eval_draws >= 1, "demo.gan_eval_draws must be >= 1")


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    svr: SVRConfig = field(default_factory=SVRConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    vrn: VRNConfig = field(default_factory=VRNConfig)
    stereo: StereoConfig = field(default_factory=StereoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


SAFE_GLOBALS = [Config, *(f.default_factory for f in fields(Config))]  # for torch's weights_only checkpoint loads
