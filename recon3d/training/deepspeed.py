"""DeepSpeed for the stages with one optimiser: the ZeRO JSON completed from the recon3d config and checked before
any process group starts, the strategy built from it, and ZeRO checkpoint folders turned into single files.

The JSON holds ZeRO settings only. What recon3d's config decides is filled in here and refused in the JSON: the
micro-batch (loader.batch_size), gradient accumulation (train.accumulate_grad_batches, which Lightning passes on),
precision (train.precision: Lightning writes the fp16/bf16 sections) and the ZeRO stage when the strategy names one.

Lightning allows DeepSpeed on CUDA only. DeepSpeed itself runs on CPU over gloo, so `CpuDeepSpeedStrategy` lifts the
three CUDA-only steps (the accelerator check, the device-index check, the device rank handed to
deepspeed.initialize) for tests and CPU smoke runs; it is chosen where training runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies.ddp import DDPStrategy

from recon3d.config import Config, config_file
from recon3d.errors import ConfigError
from recon3d.training.allocation import trains_on_gpu

# keys the JSON must not set, and the recon3d setting that decides each
DECIDED_ELSEWHERE = {
    "train_micro_batch_size_per_gpu": "loader.batch_size",
    "train_batch_size": "loader.batch_size x ranks x train.accumulate_grad_batches",
    "gradient_accumulation_steps": "train.accumulate_grad_batches",
    "fp16": "train.precision", "bf16": "train.precision", "amp": "train.precision",
    "optimizer": "the task's configure_optimizers", "scheduler": "the task's configure_optimizers",
}


def strategy_stage(strategy: str) -> int:
    """The ZeRO stage a strategy name asks for (deepspeed_stage_3 -> 3), 0 when it names none."""
    tail = strategy.rsplit("_", 1)[-1]
    return int(tail) if strategy.startswith("deepspeed_stage_") and tail.isdigit() else 0


def _autos(node: Any, where: str = ""):
    """The dotted keys of every "auto" value in a JSON object."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _autos(value, f"{where}.{key}" if where else str(key))
    elif node == "auto":
        yield where


def deepspeed_config(cfg: Config) -> Dict[str, Any]:
    """The DeepSpeed config dict for this run: train.deepspeed_config (or ZeRO at the strategy's stage) completed.

    Raises:
        ConfigError: a missing or malformed JSON, an "auto" value, a key recon3d decides, or a ZeRO stage that
        disagrees with the strategy name; each names the file and the key.
    """
    train = cfg.train
    named = strategy_stage(train.strategy)
    where = train.deepspeed_config or f"train.strategy={train.strategy}"
    if train.deepspeed_config:
        path = config_file(train.deepspeed_config)
        try:
            config = json.loads(path.read_text())
        except OSError as err:
            raise ConfigError(f"train.deepspeed_config={path}: cannot read it ({err.strerror})") from None
        except ValueError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level")
    else:
        config = {"zero_optimization": {"stage": named or 2}, "zero_allow_untested_optimizer": True}
    auto = next(_autos(config), None)
    if auto is not None:
        raise ConfigError(f"{where}: {auto} is \"auto\" (a Hugging Face convention); give a value, or remove it "
                          f"where recon3d fills it ({', '.join(DECIDED_ELSEWHERE)})")
    for key, owner in DECIDED_ELSEWHERE.items():
        if key in config:
            raise ConfigError(f"{where}: remove {key!r}: recon3d sets it from {owner}")
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict) or zero.get("stage") not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: zero_optimization.stage must be 0, 1, 2 or 3")
    if named and zero["stage"] != named:
        raise ConfigError(f"{where}: zero_optimization.stage is {zero['stage']} but train.strategy="
                          f"{train.strategy} asks for stage {named}")
    config["train_micro_batch_size_per_gpu"] = cfg.loader.batch_size
    config.setdefault("zero_allow_untested_optimizer", True)  # the tasks' own torch Adam, not DeepSpeed's fused one
    return config


def build_deepspeed_strategy(cfg: Config):
    """Lightning's DeepSpeedStrategy on this run's config (the CPU variant where it trains on the CPU:
    train.accelerator=cpu, or auto on a machine without a GPU)."""
    try:
        import deepspeed  # noqa: F401, PLC0415 - the deepspeed extra: fail here, naming the fix
    except ImportError:
        raise ConfigError(f"train.strategy={cfg.train.strategy} needs DeepSpeed: pip install -e '.[deepspeed]'") \
            from None
    config = deepspeed_config(cfg)
    if not trains_on_gpu(cfg.train):
        return cpu_strategy_class()(config=config)
    from lightning.pytorch.strategies import DeepSpeedStrategy  # noqa: PLC0415 - needs the deepspeed extra

    return DeepSpeedStrategy(config=config)


def cpu_strategy_class():
    """Lightning's DeepSpeedStrategy with its CUDA-only steps lifted: DeepSpeed on CPU ranks over gloo.

    For tests and CPU smoke runs; it proves the Lightning + DeepSpeed path (ZeRO partitioning, engine steps,
    checkpoint folders) without a GPU, not speed."""
    from lightning.pytorch.strategies import DeepSpeedStrategy  # noqa: PLC0415 - needs the deepspeed extra
    class CpuDeepSpeedStrategy(DeepSpeedStrategy):
        strategy_name = "deepspeed_cpu"

        def setup_environment(self) -> None:  # Lightning refuses anything but CUDAAccelerator here
            DDPStrategy.setup_environment(self)

        def setup_distributed(self) -> None:  # without the CUDA device-index check
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

        def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
            import deepspeed  # noqa: PLC0415 - the deepspeed extra

            engine, ds_optimizer, _, _ = deepspeed.initialize(
                args=argparse.Namespace(device_rank=self.local_rank),  # a CPU device has no index
                config=self.config, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                model_parameters=[p for p in model.parameters() if p.requires_grad], dist_init_required=False)
            return engine, ds_optimizer

    return CpuDeepSpeedStrategy
