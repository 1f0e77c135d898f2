"""The model and training half of the configuration schema: the loader, the models of every stage, the trainer.
Each section checks its own fields; recon3d/config/schema.py assembles the whole Config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from recon3d.config.data import _check
from recon3d.stages import STAGES

LOADER_PIPELINES = ("autoencoder", "image", "volume", "stereo")  # what loader.stage can name (data/datamodule.py)
COMPILE_CHOICES = ("auto", "on", "off", "true", "false")  # train.compile (YAML reads on/off as true/false)
LR_SCHEDULES = ("constant", "cosine")  # train.lr_schedule (recon3d/tasks/schedule.py)
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "auto")


@dataclass
class LoaderConfig:
    shards: str = "shards/demo"  # folder holding manifest.json, or where it is: https://host/shards (any scheme
    # webdataset opens) or pipe:CMD with {file} for the file name (pipe:aws s3 cp s3://bucket/shards/{file} -); or
    # a shard list as webdataset takes one (DIR/train-{000000..000009}.tar, URL or pipe:): only those of their split
    cache_dir: str = ""  # node-local folder: shards are copied there on first use (checked) and read from there
    stage: str = ""  # empty: what train.stage reads (recon3d/stages.py); or autoencoder (voxels + points) | image (a
    # view + camera) | volume (a view + its view-aligned occupancy) | stereo (a left/right pair: render.stereo_baseline)
    batch_size: int = 16  # samples per batch per process
    num_workers: int = 2  # DataLoader worker processes per rank
    point_resolution: int = 16  # which point set the autoencoder stage reads (16, 32 or 64)
    points_per_sample: int = 0  # random subset of the point set per sample (0: all)
    crop_size: int = 128  # image stage: random crop in training, centre crop in evaluation
    flip: bool = True  # image and volume stages: random horizontal flip in training (never for stereo pairs)
    grayscale: bool = True  # image stage: one channel (as IM-NET) or RGB, composited on white
    volume_depth: int = 32  # volume stage: depth slices of the view-aligned occupancy (its height and width are
    # crop_size / 4, the hourglass's output grid)
    holdout_views: int = 0  # image, volume and stereo stages: the last N views of every shape are never trained
    # on; evaluation reads the last one (0: train on all views, evaluate view 0)
    train_samples_per_epoch: int = 0  # resampled training epoch length over all ranks (0: the train split size)
    shuffle_buffer: int = 512  # shards without an index (older sets, streamed): per-worker buffer of raw samples
    # (about 130 KiB each for the autoencoder stage at 64^3); indexed shards are shuffled sample by sample
    persistent_workers: bool = True  # keep DataLoader workers between epochs (start-up costs seconds each)
    seed: int = 0  # seeds shard resampling and augmentation
    verify: str = "size"  # shards checked when loaders are made: presence and size against the manifest, and its
    # count against the shard's sidecar | sha256: also each shard's checksum (one extra read of the data) | off;
    # the size every time, the rest once per file state per run

    def __post_init__(self) -> None:
        _check(self.verify in ("size", "sha256", "off"), f"loader.verify={self.verify!r}: size | sha256 | off")
        _check(self.stage in ("", *LOADER_PIPELINES),
               f"loader.stage={self.stage!r}: empty (follow train.stage) or one of {LOADER_PIPELINES}")
        _check(self.batch_size >= 1 and self.num_workers >= 0, "loader.batch_size >= 1 and loader.num_workers >= 0")
        _check(self.point_resolution in (8, 16, 32, 64, 128, 256),
               "loader.point_resolution must be a power of 2, 8..256")
        _check(self.crop_size >= 8, "loader.crop_size must be >= 8")
        _check(self.volume_depth >= 2, "loader.volume_depth must be >= 2")


@dataclass
class ModelConfig:
    latent_dim: int = 256  # z size; the original IM-NET paper uses 128
    encoder_channels: int = 32  # first 3D-conv width of the voxel encoder (doubles per level)
    decoder_widths: List[int] = field(default_factory=lambda: [1024, 1024, 1024, 512, 256, 128])  # implicit MLP
    decoder_output: str = "leaky_clip"  # leaky_clip (IM-NET's; keeps gradients where a sigmoid saturates) | sigmoid
    point_octaves: int = 0  # sin/cos of each coordinate at 2^k pi, k < K, beside it (0: IM-NET's raw coordinates)

    def __post_init__(self) -> None:
        _check(self.latent_dim >= 1 and self.encoder_channels >= 1, "model.latent_dim/encoder_channels must be >= 1")
        _check(len(self.decoder_widths) >= 1 and min(self.decoder_widths) >= 1, "model.decoder_widths: >= 1 layer")
        _check(self.decoder_output in ("sigmoid", "leaky_clip"), "model.decoder_output: sigmoid or leaky_clip")
        _check(0 <= self.point_octaves <= 16, "model.point_octaves must be in 0..16")


@dataclass
class SVRConfig:
    autoencoder_ckpt: str = ""  # the trained autoencoder: its frozen decoder measures predictions in shape space
    latents: str = ""  # exported latents folder (default <loader.shards>/latents/<autoencoder run name>)
    architecture: str = "resnet18"  # resnet18 | resnet34
    base_width: int = 64  # first-stage channels (64 in the paper; smaller for CPU runs)
    epochs: int = 50  # training epochs
    lr: float = 1e-4  # Adam learning rate
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    lr_schedule: str = "constant"  # constant (IM-NET) | cosine: down to lr_final x lr along the run (as train.*)
    lr_final: float = 0.05  # cosine: the learning rate at the run's end, as a share of lr

    def __post_init__(self) -> None:
        _check(self.architecture in ("resnet18", "resnet34"), "svr.architecture: resnet18 or resnet34")
        _check(self.epochs >= 1 and self.base_width >= 1 and self.lr > 0, "svr.epochs/base_width/lr must be > 0")
        _check(self.lr_schedule in LR_SCHEDULES, f"svr.lr_schedule={self.lr_schedule!r}: {' | '.join(LR_SCHEDULES)}")
        _check(0 <= self.lr_final <= 1, "svr.lr_final is a share of svr.lr, in [0, 1]")


@dataclass
class GANConfig:
    autoencoder_ckpt: str = ""  # the trained autoencoder: its decoder turns samples into shapes for COV/MMD
    latents: str = ""  # exported latents folder (default <loader.shards>/latents/<autoencoder run name>)
    noise_dim: int = 128  # generator input size
    generator_widths: List[int] = field(default_factory=lambda: [2048, 2048])  # hidden layers (IM-NET's latent GAN)
    critic_widths: List[int] = field(default_factory=lambda: [2048, 2048])  # hidden layers of the critic
    n_critic: int = 5  # critic updates per generator update (WGAN-GP)
    gp_weight: float = 10.0  # gradient penalty weight lambda (WGAN-GP)
    lr: float = 1e-4  # Adam learning rate, both networks (WGAN-GP)
    beta1: float = 0.5  # Adam beta1 (WGAN-GP)
    beta2: float = 0.9  # Adam beta2 (WGAN-GP)
    batch_size: int = 64  # latent codes per step per process
    epochs: int = 200  # training epochs
    samples_per_epoch: int = 0  # codes drawn per epoch over all ranks (0: the train split size)
    eval_samples: int = 64  # generated shapes compared with the reference shapes for COV / MMD
    reference_split: str = "val"  # split whose shapes are the COV / MMD reference set (auto: the first of val,
    # test, train that holds shapes)
    reference_shapes: int = 100  # at most this many reference shapes
    eval_points: int = 1024  # surface points per shape in the COV / MMD Chamfer distances
    ema_decay: float = 0.999  # shapes come from a moving average of the generator's weights (0: the generator's own)

    def __post_init__(self) -> None:
        _check(self.noise_dim >= 1 and min(self.generator_widths + self.critic_widths, default=1) >= 1,
               "gan.noise_dim and the widths must be >= 1")
        _check(self.n_critic >= 1 and self.gp_weight >= 0 and self.lr > 0, "gan.n_critic >= 1, gp_weight >= 0, lr > 0")
        _check(self.batch_size >= 2 and self.epochs >= 1, "gan.batch_size >= 2 and gan.epochs >= 1")
        _check(self.reference_split in ("train", "val", "test", "auto"),
               "gan.reference_split: train, val, test or auto")
        _check(self.eval_samples >= 1 and self.eval_points >= 16, "gan.eval_samples >= 1 and gan.eval_points >= 16")
        _check(0 <= self.ema_decay < 1, "gan.ema_decay: 0 (off) or in (0, 1)")


@dataclass
class VRNConfig:
    stacks: int = 2  # hourglasses in sequence, each supervised (VRN)
    width: int = 128  # channels inside the hourglasses
    hourglass_levels: int = 3  # down/up-sampling steps per hourglass (from the crop_size / 4 grid)
    positive_weight: float = 1.0  # weight of occupied voxels in the cross-entropy (1: VRN's plain loss; a few % of
    # a volume is occupied, so short runs collapse to "all empty" without a larger weight)
    soft_iou_weight: float = 0.0  # > 0: add this x (1 - soft IoU of the sigmoid volume) per stack (0: VRN's loss); it
    # pulls the logits > 0 decision towards the IoU the model is scored by, where positive_weight biases it to excess
    epochs: int = 40  # training epochs
    lr: float = 2.5e-4  # RMSprop in VRN; Adam here (lr, betas below)
    beta1: float = 0.9  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    lr_schedule: str = "constant"  # constant | cosine: down to lr_final x lr along the run (its time or steps)
    lr_final: float = 0.05  # cosine: the learning rate at the run's end, as a share of lr

    def __post_init__(self) -> None:
        _check(self.lr_schedule in LR_SCHEDULES, f"vrn.lr_schedule={self.lr_schedule!r}: {' | '.join(LR_SCHEDULES)}")
        _check(0 <= self.lr_final <= 1, "vrn.lr_final is a share of vrn.lr, in [0, 1]")
        _check(self.stacks >= 1 and self.width >= 4 and self.hourglass_levels >= 1, "vrn.stacks/width/levels >= 1")
        _check(self.epochs >= 1 and self.lr > 0 and self.positive_weight > 0 and self.soft_iou_weight >= 0,
               "vrn.epochs >= 1, vrn.lr > 0, vrn.positive_weight > 0 and vrn.soft_iou_weight >= 0")


@dataclass
class StereoConfig:
    disparity_levels: int = 33  # disparity planes of the per-pixel softmax (Deep3D: 33)
    disparity_min: float = 0.0  # smallest disparity in pixels of the input image (right(x) = left(x + d))
    disparity_max: float = 16.0  # largest disparity in pixels
    widths: List[int] = field(default_factory=lambda: [32, 64, 128, 256])  # feature channels per scale (each /2)
    epochs: int = 40  # training epochs
    lr: float = 2e-4  # Adam learning rate
    beta1: float = 0.9  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    lr_schedule: str = "constant"  # constant | cosine: down to lr_final x lr along the run (its time or steps)
    lr_final: float = 0.05  # cosine: the learning rate at the run's end, as a share of lr

    def __post_init__(self) -> None:
        _check(self.lr_schedule in LR_SCHEDULES, f"stereo.lr_schedule={self.lr_schedule!r}: {' | '.join(LR_SCHEDULES)}")
        _check(0 <= self.lr_final <= 1, "stereo.lr_final is a share of stereo.lr, in [0, 1]")
        _check(self.disparity_levels >= 2 and self.disparity_max > self.disparity_min,
               "stereo: disparity_levels >= 2 and disparity_max > disparity_min")
        _check(len(self.widths) >= 1 and min(self.widths) >= 1, "stereo.widths: at least one scale")
        _check(self.epochs >= 1 and self.lr > 0, "stereo.epochs >= 1 and stereo.lr > 0")


@dataclass
class TrainConfig:
    stage: str = "autoencoder"  # a row of recon3d/stages.py: autoencoder | svr (image encoder: svr.autoencoder_ckpt) |
    # gan (latent GAN: gan.autoencoder_ckpt) | vrn (image -> view-aligned volume) | stereo (Deep3D, left -> right)
    run_dir: str = "runs/autoencoder"  # checkpoints/, logs/, wandb/, reconstructions/ go here
    point_resolutions: List[int] = field(default_factory=lambda: [16, 32, 64])  # progressive phases (IM-NET)
    phase_epochs: List[int] = field(default_factory=lambda: [20, 20, 40])  # epochs per phase (at most, by time)
    phase_fractions: List[float] = field(default_factory=list)  # with max_minutes: phase k ends at this share of it
    lr: float = 5e-5  # Adam learning rate (IM-NET)
    lr_schedule: str = "constant"  # constant (IM-NET) | cosine: down to lr_final x lr along the run (its time or steps)
    lr_final: float = 0.05  # cosine: the learning rate at the run's end, as a share of lr
    beta1: float = 0.5  # Adam beta1 (IM-NET)
    beta2: float = 0.999  # Adam beta2
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: int = 1  # devices per node (SLURM: must equal --ntasks-per-node)
    num_nodes: int = 1  # nodes
    strategy: str = "auto"  # auto | ddp | deepspeed_stage_2 | deepspeed_stage_3 (accelerator=cpu: a CPU test variant)
    deepspeed_config: str = ""  # DeepSpeed JSON (ZeRO settings), e.g. configs/deepspeed/zero2.json
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | auto (bf16-mixed where the hardware computes bf16)
    float32_matmul_precision: str = "high"  # fp32 matmuls on GPUs: highest | high (TF32 tensor cores) | medium
    compile: str = "auto"  # torch.compile of the trained networks: auto (on where training runs on CUDA and triton
    # is installed; off on CPUs, where it buys little: docs/results.md) | on | off (recon3d/training/build.py)
    accumulate_grad_batches: int = 1  # gradient accumulation
    ema_decay: float = 0.0  # > 0 (e.g. 0.99): validation, checkpoints and the model handed on hold an exponential
    # moving average of the weights, updated every step (recon3d/training/callbacks.py WeightEma); 0: off
    val_resolution: int = 32  # grid on which val/iou is measured and val/chamfer's mesh is extracted
    val_every_epochs: int = 1  # validation frequency
    checkpoint_every_steps: int = 0  # also write last.ckpt every N steps (0: at epoch ends only)
    max_minutes: float = 0.0  # stop (with a checkpoint) after this long (0: no limit)
    log_every_steps: int = 10  # scalar logging frequency
    reconstructions_to_log: int = 4  # shapes rendered (input beside output) per validation
    logger: str = "wandb"  # wandb (offline unless wandb_mode=online) | csv (a CSV log is always written)
    wandb_project: str = "recon3d"  # W&B project
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_group: str = ""  # W&B run group (a sweep groups its trials under its name)
    resume: str = "auto"  # auto: the newest of last.ckpt (file or ZeRO folder) and hpc_ckpt_N | never | a path
    keep_hpc_checkpoints: int = 2  # preemption checkpoints (hpc_ckpt_N, written on SIGTERM/requeue) kept per run
    progress: str = "auto"  # bar: Lightning's progress bar | log: one line per epoch | auto: bar on a terminal only
    seed: int = 0  # seeds weights and data order
    trainer: Dict[str, Any] = field(default_factory=dict)  # more of Lightning's Trainer settings, as its keywords
    # (gradient_clip_val, sync_batchnorm, deterministic, benchmark, limit_*_batches, fast_dev_run, overfit_batches,
    # val_check_interval, profiler, ...): checked against the installed Trainer before any work
    # (recon3d/training/build.py trainer_settings); those recon3d sets from keys above are refused, naming the key

    def __post_init__(self) -> None:
        _check(len(self.point_resolutions) == len(self.phase_epochs) >= 1,
               "train.point_resolutions and train.phase_epochs must have the same (non-zero) length")
        _check(not self.phase_fractions or (len(self.phase_fractions) == len(self.phase_epochs)
                                            and min(self.phase_fractions) > 0),
               f"train.phase_fractions={list(self.phase_fractions)} for {len(self.phase_epochs)} phase(s) "
               f"(train.phase_epochs={list(self.phase_epochs)}): give one share > 0 per phase, or [] for phases by "
               "epochs alone")
        _check(all(e >= 0 for e in self.phase_epochs) and sum(self.phase_epochs) > 0,
               "train.phase_epochs must be >= 0 and not all zero")
        _check(self.logger in ("wandb", "csv"), f"train.logger={self.logger!r}: wandb or csv")
        _check(self.stage in STAGES, f"train.stage={self.stage!r}: one of {tuple(STAGES)}")
        deepspeed = "deepspeed" in self.strategy
        _check(not self.deepspeed_config or deepspeed,
               f"train.deepspeed_config is set but train.strategy={self.strategy} is not a DeepSpeed strategy")
        _check(self.precision in PRECISIONS, f"train.precision={self.precision!r}: one of {PRECISIONS}")
        _check(self.float32_matmul_precision in ("highest", "high", "medium"),
               "train.float32_matmul_precision: highest | high | medium")
        _check(not (deepspeed and not STAGES[self.stage].deepspeed), f"train.strategy={self.strategy}: the "
               f"{self.stage} stage has two optimisers and Lightning's DeepSpeed strategy takes one; use ddp or auto")
        _check(0 <= self.ema_decay < 1, "train.ema_decay in [0, 1): 0 is off")
        _check(not (self.ema_decay and self.stage == "gan"),
               "train.ema_decay: the gan stage averages its generator itself (gan.ema_decay)")
        _check(not (deepspeed and self.ema_decay), f"train.ema_decay with train.strategy={self.strategy}: DeepSpeed "
               "keeps the weights itself (ZeRO-3 shards them), so the average would miss them; use ddp or auto")
        _check(str(self.compile).lower() in COMPILE_CHOICES,
               f"train.compile={self.compile!r}: {' | '.join(COMPILE_CHOICES[:3])}")
        self.compile = {"true": "on", "false": "off"}.get(str(self.compile).lower(), str(self.compile).lower())
        _check(self.wandb_mode in ("offline", "online", "disabled"), "train.wandb_mode: offline | online | disabled")
        _check(self.progress in ("auto", "bar", "log"), f"train.progress={self.progress!r}: auto | bar | log")
        _check(self.keep_hpc_checkpoints >= 1, "train.keep_hpc_checkpoints must be >= 1")
        _check(self.lr > 0 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.lr > 0 and betas in [0, 1)")
        _check(self.lr_schedule in LR_SCHEDULES,
               f"train.lr_schedule={self.lr_schedule!r}: {' | '.join(LR_SCHEDULES)}")
        _check(0 <= self.lr_final <= 1, "train.lr_final is a share of train.lr, in [0, 1]")
