"""Each stage's networks from its hyperparameters: the one place that turns a checkpoint's (or an export card's)
hyperparameters into plain torch modules. The tasks build theirs here; `recon3d.models.exported` loads exports here,
with no Lightning and no pickle.

PARTS names, per stage, the networks an export holds: the name each gets, how it is built from the stage's
hyperparameters, and where its weights sit in the task's state_dict.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, NamedTuple

from torch import nn

from recon3d.models.hourglass import HourglassVolumeRegressor
from recon3d.models.image_encoder import ImageEncoder
from recon3d.models.implicit_decoder import Autoencoder
from recon3d.models.latent_gan import LatentCritic, LatentGenerator
from recon3d.models.stereo import StereoViewSynthesizer

Hparams = Mapping[str, Any]


def autoencoder(hp: Hparams) -> Autoencoder:
    return Autoencoder(latent_dim=hp["latent_dim"], encoder_channels=hp["encoder_channels"],
                       resolution=hp["voxel_resolution"], decoder_widths=list(hp["decoder_widths"]),
                       decoder_output=hp.get("decoder_output", "leaky_clip"), point_octaves=hp.get("point_octaves", 0))


def image_encoder(hp: Hparams) -> ImageEncoder:
    return ImageEncoder(latent_dim=hp["latent_dim"], image_channels=hp["image_channels"],
                        architecture=hp.get("architecture", "resnet18"), base_width=hp["base_width"])


def generator(hp: Hparams) -> LatentGenerator:
    return LatentGenerator(noise_dim=hp["noise_dim"], latent_dim=hp["latent_dim"], widths=list(hp["generator_widths"]))


def critic(hp: Hparams) -> LatentCritic:
    return LatentCritic(latent_dim=hp["latent_dim"], widths=list(hp["critic_widths"]))


def volume_regressor(hp: Hparams) -> HourglassVolumeRegressor:
    return HourglassVolumeRegressor(image_channels=hp["image_channels"], depth=hp["depth"], stacks=hp["stacks"],
                                    width=hp["width"], hourglass_levels=hp["hourglass_levels"])


def view_synthesizer(hp: Hparams) -> StereoViewSynthesizer:
    return StereoViewSynthesizer(image_channels=hp["image_channels"], disparity_levels=hp["disparity_levels"],
                                 disparity_min=hp["disparity_min"], disparity_max=hp["disparity_max"],
                                 widths=list(hp["widths"]))


class Part(NamedTuple):
    build: Callable[[Hparams], nn.Module]
    prefix: Callable[[Hparams], str]  # its weights' prefix in the task's state_dict


PARTS: Dict[str, Dict[str, Part]] = {  # stage -> the networks an export of it holds
    "autoencoder": {"autoencoder": Part(autoencoder, lambda hp: "model.")},
    "svr": {"image_encoder": Part(image_encoder, lambda hp: "encoder.")},
    # the generator that samples: its weight average when the run kept one (LatentGANTask.sampler)
    "gan": {"generator": Part(generator, lambda hp: "generator_ema." if hp.get("ema_decay", 0) > 0 else "generator.")},
    "vrn": {"volume_regressor": Part(volume_regressor, lambda hp: "model.")},
    "stereo": {"view_synthesizer": Part(view_synthesizer, lambda hp: "model.")},
}
