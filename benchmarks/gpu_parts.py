"""The GPU proof's measurements (benchmarks.gpu_proof): each heavy one runs in a fresh process (`part`), so
that its peak memory, process group and compiled graphs are its own."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile

from recon3d.bench.extract import measure_extraction
from recon3d.bench.timing import median_ms, repeat_loader, step_timer, timed
from recon3d.config import load_config
from recon3d.data.loading.datamodule import ShardDataModule
from recon3d.data.loading.pipelines import expand_batch
from recon3d.data.loading.shards import load_manifest
from recon3d.models.hourglass import HourglassVolumeRegressor
from recon3d.models.image_encoder import ImageEncoder
from recon3d.models.implicit_decoder import Autoencoder
from recon3d.tasks.autoencoder import AutoencoderTask
from recon3d.training.build import build_strategy, set_matmul_precision

FULL_MODEL = {"latent_dim": 256, "encoder_channels": 32, "decoder_widths": [1024, 1024, 1024, 512, 256, 128]}
TINY_MODEL = {"latent_dim": 16, "encoder_channels": 4, "decoder_widths": [32, 16]}
# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) by the name torch reports; --peak-tflops overrides
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def sizes(tiny: bool) -> dict:
    """Every size the proof uses: the issue's full-size figures, or toy ones for the CPU dry run."""
    if tiny:
        return {"model": TINY_MODEL, "voxels": 16, "point_resolution": 16, "batch": 2, "points": 256, "steps": 3,
                "warmup": 1, "categories": 3, "per_category": 3, "extract_resolution": 32, "extract_shapes": 2,
                "extract_batch": 3, "image_batch": 2, "image_size": 32, "image_width": 8, "vrn_width": 8,
                "loader_batches": 4, "fit_minutes": 0.15, "decoder_points": 4096, "device": "cpu"}
    return {"model": FULL_MODEL, "voxels": 64, "point_resolution": 64, "batch": 32, "points": 4096, "steps": 30,
            "warmup": 5, "categories": 7, "per_category": 12, "extract_resolution": 256, "extract_shapes": 4,
            "extract_batch": 64, "image_batch": 64, "image_size": 128, "image_width": 64, "vrn_width": 128,
            "loader_batches": 40, "fit_minutes": 1.0, "decoder_points": 65536, "device": "cuda"}


def autoencoder_flops(latent_dim: int, encoder_channels: int, decoder_widths: Sequence[int],
                      resolution: int) -> Dict[str, float]:
    """Forward FLOPs of the autoencoder: decoder per point, decoder per shape (z half of layer 1), encoder per
    shape (see the module docstring)."""
    widths = list(decoder_widths)
    per_point = 2 * (3 * widths[0] + sum(a * b for a, b in zip(widths[:-1], widths[1:])) + widths[-1])
    encoder, channels, level = 0, 1, 0
    while resolution >> (level + 1) >= 4:  # stride-2 4^3 convolutions down to 4^3 (VoxelEncoder)
        out = encoder_channels * 2 ** level
        encoder += 2 * channels * out * 64 * (resolution >> (level + 1)) ** 3
        channels, level = out, level + 1
    encoder += 2 * channels * latent_dim * 64  # the last 4^3 convolution to z
    return {"decoder_per_point": float(per_point), "decoder_per_shape": float(2 * latent_dim * widths[0]),
            "encoder_per_shape": float(encoder)}


def step_flops(flops: Dict[str, float], batch: int, points: int) -> float:
    """Training FLOPs of one autoencoder step: 3 x forward."""
    return 3 * (batch * points * flops["decoder_per_point"] + batch * (flops["decoder_per_shape"]
                                                                        + flops["encoder_per_shape"]))


def peak_tflops(device_name: str, override: float = 0.0) -> float:
    """The chip's dense bf16 peak (0 when unknown: MFU is then not reported)."""
    if override:
        return override
    return next((peak for name, peak in PEAK_BF16_TFLOPS.items() if name in device_name), 0.0)


def log(line: str) -> None:
    print(line, flush=True)


# mode -> (Lightning strategy, precision); each one GPU (or one CPU process with --tiny)
STEP_MODES = {"fp32": ("auto", "32-true"), "bf16": ("auto", "bf16-mixed"),
              "bf16_direct_conv": ("auto", "bf16-mixed"),  # the encoder's first convolution not blocked: the baseline
              "bf16_ddp": ("ddp", "bf16-mixed"), "zero2_bf16": ("deepspeed_stage_2", "bf16-mixed")}


def proof_config(tiny: bool, shards: str, *overrides: str):
    size = sizes(tiny)
    model = size["model"]
    files = [Path(__file__).parents[1] / "configs" / "tiny.yaml"] if tiny else []
    return load_config(files, [f"loader.shards={shards}", f"model.latent_dim={model['latent_dim']}",
                               f"model.encoder_channels={model['encoder_channels']}",
                               f"model.decoder_widths={model['decoder_widths']}", f"loader.batch_size={size['batch']}",
                               f"train.accelerator={'cpu' if tiny else 'gpu'}", "train.logger=csv", *overrides])


def _device(tiny: bool) -> str:
    return sizes(tiny)["device"]


def _peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _compact_batch(shards: str, tiny: bool) -> dict:
    """One real training batch as the loader delivers it (bit-packed voxels and values, point indices)."""
    size = sizes(tiny)
    dm = ShardDataModule(shards=shards, batch_size=size["batch"], num_workers=0, point_resolution=size[
        "point_resolution"], points_per_sample=size["points"], rank=0, world_size=1)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def step_part(mode: str, shards: str, tiny: bool) -> dict:
    """The autoencoder's training step under one strategy and precision: Lightning, a fixed real batch that takes
    the loader's compact form to the device (expanded there, as in training), median after warm-up."""
    strategy, precision = STEP_MODES[mode]
    size, device = sizes(tiny), _device(tiny)
    cfg = proof_config(tiny, shards, f"train.strategy={strategy}", f"train.precision={precision}",
                  f"train.point_resolutions=[{size['point_resolution']}]", "train.phase_epochs=[1]")
    batch = {k: v for k, v in _compact_batch(shards, tiny).items() if isinstance(v, torch.Tensor)}
    torch.manual_seed(0)
    set_matmul_precision(cfg)
    task = AutoencoderTask.from_config(cfg, load_manifest(shards))
    task.model.encoder.blocked_first_conv = mode != "bf16_direct_conv"  # (blocked runs on CUDA only)
    task.on_after_batch_transfer = lambda b, i: task.trainer.precision_plugin.convert_input(expand_batch(b))
    total = size["warmup"] + size["steps"]
    timer = step_timer(device.startswith("cuda"), size["warmup"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(accelerator=cfg.train.accelerator, devices=1, strategy=build_strategy(cfg),
                        precision=precision, max_steps=total, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=repeat_loader(batch, total))
    step_s = statistics.median(timer.times)
    flops = step_flops(autoencoder_flops(resolution=size["voxels"], **size["model"]), size["batch"], size["points"])
    result = {"strategy": strategy, "precision": precision, "step_ms": round(step_s * 1000, 3),
              "step_ms_runs": [round(t * 1000, 2) for t in timer.times],
              "samples_per_s": round(size["batch"] / step_s, 1),
              "points_per_s": round(size["batch"] * size["points"] / step_s), "peak_mib": _peak_mib(device),
              "tflops_per_step": round(flops / 1e12, 4), "achieved_tflops": round(flops / step_s / 1e12, 2)}
    return _with_mfu(result, flops / step_s)


def _with_mfu(result: dict, flops_per_s: float) -> dict:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_tflops(name)
    result["mfu"] = round(flops_per_s / (peak * 1e12), 4) if peak else None
    return result


def _plain_training(shards: str, tiny: bool):
    """(model, step(net), cuda): the autoencoder of the proof's size, Adam and one real batch expanded on the
    device, for plain loops; step(net) is one bf16 (CPU: fp32) training step of `net` (the model or a compiled
    one) on that batch, which it keeps as step.batch."""
    size, device = sizes(tiny), _device(tiny)
    cuda = device.startswith("cuda")
    batch = expand_batch({k: v.to(device) for k, v in _compact_batch(shards, tiny).items()
                          if isinstance(v, torch.Tensor)})
    torch.manual_seed(0)
    model = Autoencoder(**size["model"], resolution=size["voxels"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(net) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.mse_loss(net(step.batch["voxels"], step.batch["points"]).float(),
                                                step.batch["values"])
        loss.backward()
        opt.step()

    step.batch = batch
    return model, step, cuda


def compile_part(_, shards: str, tiny: bool) -> dict:
    """A plain bf16 (CPU: fp32) loop of the autoencoder step and of a decoder forward, eager then torch.compile'd:
    the first compiled call's seconds (the compilation) and the median after warm-up."""
    size, device = sizes(tiny), _device(tiny)
    model, train_step, cuda = _plain_training(shards, tiny)
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda)
    points = torch.rand(1, size["decoder_points"], 3, device=device) - 0.5
    z = torch.rand(1, size["model"]["latent_dim"], device=device)
    result = {"precision": "bf16 autocast" if cuda else "fp32"}
    for label, net in (("eager", model), ("compiled", torch.compile(model))):
        def step():
            train_step(net)

        def decode():
            with torch.no_grad(), autocast:
                net.decoder(points, z)

        first = timed(step, 1, 0, cuda)[0]
        result[f"step_{label}_ms"] = median_ms(timed(step, size["steps"], size["warmup"], cuda))
        result[f"step_{label}_first_call_s"] = round(first, 2)
        if label == "compiled":
            net.decoder = torch.compile(model.decoder)
        first = timed(decode, 1, 0, cuda)[0]
        result[f"decoder_{label}_ms"] = median_ms(timed(decode, size["steps"], size["warmup"], cuda))
        result[f"decoder_{label}_first_call_s"] = round(first, 2)
    result["decoder_points"] = size["decoder_points"]
    result["step_speedup"] = round(result["step_eager_ms"] / result["step_compiled_ms"], 3)
    result["decoder_speedup"] = round(result["decoder_eager_ms"] / result["decoder_compiled_ms"], 3)
    return result


def profile_part(_, shards: str, tiny: bool) -> dict:
    """Where the bf16 (CPU: fp32) autoencoder step spends its device time: torch.profiler over a plain loop (as in
    compile_part, eager), the kernels with the largest self time, each with its share of the step's kernel time."""
    size = sizes(tiny)
    model, train_step, cuda = _plain_training(shards, tiny)

    def step():
        train_step(model)

    steps = 5
    wall = median_ms(timed(step, steps, size["warmup"], cuda))
    # cuDNN's algorithm search, then also channels-last 3D tensors for the encoder's convolutions
    variants = {}
    torch.backends.cudnn.benchmark = True
    variants["cudnn_benchmark"] = median_ms(timed(step, size["steps"], size["warmup"], cuda))
    model.encoder.to(memory_format=torch.channels_last_3d)
    batch = train_step.batch
    voxels = batch["voxels"]
    batch["voxels"] = voxels.contiguous(memory_format=torch.channels_last_3d)
    variants["cudnn_benchmark_channels_last_3d"] = median_ms(timed(step, size["steps"], size["warmup"], cuda))
    model.encoder.to(memory_format=torch.contiguous_format)
    batch["voxels"] = voxels
    torch.backends.cudnn.benchmark = False
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        timed(step, steps, 0, cuda)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in rows) or 1.0
    top = [{"name": e.key[:90], "ms_per_step": round(getattr(e, key) / steps / 1000, 3), "calls_per_step":
            e.count // steps, "share": round(getattr(e, key) / total, 3)} for e in rows[:15]]
    return {"precision": "bf16 autocast" if cuda else "fp32", "step_wall_ms": wall, "variants_step_ms": variants,
            "kernel_ms_per_step": round(total / steps / 1000, 3), "top": top}


def image_part(what: str, shards: str, tiny: bool) -> dict:
    """One training step of the image encoder (ResNet-18, MSE to z) or of VRN (2 stacked hourglasses, per-stack
    cross-entropy), bf16 autocast (CPU: fp32), a plain loop on random inputs of the training shapes."""
    size, device = sizes(tiny), _device(tiny)
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    batch, side = size["image_batch"], size["image_size"]
    images = torch.rand(batch, 1, side, side, device=device)
    if what == "image_encoder":
        model = ImageEncoder(latent_dim=size["model"]["latent_dim"], base_width=size["image_width"]).to(device)
        target = torch.rand(batch, size["model"]["latent_dim"], device=device)
        loss_of = lambda out: torch.nn.functional.mse_loss(out.float(), target)  # noqa: E731
    else:
        model = HourglassVolumeRegressor(width=size["vrn_width"]).to(device)
        target = (torch.rand(batch, 32, side // 4, side // 4, device=device) > 0.9).float()
        loss_of = lambda outs: sum(torch.nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
            o.float(), target) for o in outs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            loss = loss_of(model(images))
        loss.backward()
        opt.step()

    times = timed(step, size["steps"], size["warmup"], cuda)
    return {"batch": f"{batch} x 1 x {side} x {side}", "precision": "bf16 autocast" if cuda else "fp32",
            "step_ms": median_ms(times), "images_per_s": round(batch / statistics.median(times), 1),
            "peak_mib": _peak_mib(device), "parameters": sum(p.numel() for p in model.parameters())}


def extract_part(_, shards: str, tiny: bool) -> dict:
    """Extraction with the fitted autoencoder (see run_sections): recon3d.bench.extract's measurements."""
    size = sizes(tiny)
    ckpt = Path(shards).parent / "fit" / "checkpoints" / "last.ckpt"
    result = measure_extraction(str(ckpt), shards, size["extract_shapes"], size["extract_resolution"],
                                _device(tiny), reference=True, batch=size["extract_batch"])
    flops = autoencoder_flops(resolution=size["voxels"], **size["model"])["decoder_per_point"]
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_tflops(name)
    if peak:
        for row in (row for row in result["methods"].values() if row["points"]):  # not marching cubes alone
            row["floor_ms"] = round(row["points"] * flops / (peak * 1e12) * 1000, 3)
            row["x_floor"] = round(row["ms"] / row["floor_ms"], 1)
    return result


PARTS = {**{f"step_{mode}": (lambda s, t, mode=mode: step_part(mode, s, t)) for mode in STEP_MODES},
         "compile": lambda s, t: compile_part("", s, t),
         "profile": lambda s, t: profile_part("", s, t),
         "image_encoder": lambda s, t: image_part("image_encoder", s, t),
         "vrn": lambda s, t: image_part("vrn", s, t),
         "extraction": lambda s, t: extract_part("", s, t)}


def child(what: str, root: Path, tiny: bool, timeout: float) -> dict:
    out = root / "parts" / f"{what}.json"
    cmd = [sys.executable, "-m", "benchmarks.gpu_proof", "part", what, "--shards", str(root / "shards"),
           "--out", str(out)] + (["--tiny"] if tiny else [])
    subprocess.run(cmd, check=True, timeout=max(timeout, 1))
    return json.loads(out.read_text())
