"""train.ema_decay: the weight average of recon3d.training.callbacks.WeightEma in a real (tiny) image-encoder run,
the stage whose task registers a buffer in its own setup."""

import pytest
import torch

from recon3d.errors import ConfigError
from recon3d.tasks.checkpoints import read_checkpoint
from tests.conftest import tiny_config

SVR = ("train.stage=svr", "svr.base_width=4", "loader.train_samples_per_epoch=4", "train.accelerator=cpu")


def _svr(shards, ae, run_dir, *extra):
    return tiny_config(f"loader.shards={shards}", f"train.run_dir={run_dir}", f"svr.autoencoder_ckpt={ae}", *SVR,
                       *extra)


def _differs(average: dict, live: dict) -> bool:
    return any(not torch.equal(average[k], live[k]) for k in live if live[k].is_floating_point())


def test_checkpoints_hold_the_average_and_keep_the_live_weights(tiny_shards, trained_autoencoder, tmp_path):
    from recon3d.training.run import run

    cfg = _svr(tiny_shards, trained_autoencoder, tmp_path, "svr.epochs=2", "train.ema_decay=0.9")
    first = run(cfg, enable_wandb=False, enable_progress_bar=False)
    ckpt = read_checkpoint(first.last_checkpoint)
    average, live = ckpt["state_dict"], ckpt["current_model_state"]
    assert set(live) <= set(average) and _differs(average, live)  # an average of 4 steps is not the last step
    # a resume continues both: the live weights go on training, the average goes on averaging
    second = run(_svr(tiny_shards, trained_autoencoder, tmp_path, "svr.epochs=3", "train.ema_decay=0.9"),
                 enable_wandb=False, enable_progress_bar=False)
    assert second.global_step == first.global_step + 2
    resumed = read_checkpoint(second.last_checkpoint)
    assert _differs(resumed["current_model_state"], live) and _differs(resumed["state_dict"], average)


def test_decay_zero_average_is_the_live_model(tiny_shards, trained_autoencoder, tmp_path, monkeypatch):
    """With decay 0 the average is each step's weights: the checkpoint's two copies must agree tensor by tensor
    (a copy made before the task's setup pairs the wrong tensors and fails here)."""
    from recon3d.training import build, callbacks
    from recon3d.training.run import run

    original = build.build_callbacks
    monkeypatch.setattr(build, "build_callbacks", lambda c: original(c) + [callbacks.WeightEma(0.0)])
    result = run(_svr(tiny_shards, trained_autoencoder, tmp_path, "svr.epochs=1"), enable_wandb=False,
                 enable_progress_bar=False)
    ckpt = read_checkpoint(result.last_checkpoint)
    assert not _differs(ckpt["state_dict"], ckpt["current_model_state"])


@pytest.mark.parametrize("overrides, message", [
    (("train.ema_decay=1.0",), r"ema_decay in \[0, 1\)"),
    (("train.ema_decay=0.99", "train.strategy=deepspeed_stage_2"), "DeepSpeed keeps the weights"),
    (("train.ema_decay=0.99", "train.stage=gan"), "averages its generator itself"),
])
def test_bad_ema_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(*overrides)
