"""The GPU proof's script (benchmarks/gpu_proof.sh) run as its CPU dry run, and the figures it rests on: the FLOP
count against torch's own counter, IM-NET's extraction algorithm against a dense grid, the inference precision."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_parts import TINY_MODEL, autoencoder_flops, step_flops
from recon3d.bench.extract import imnet_reference_grid
from recon3d.models.implicit_decoder import Autoencoder

ROOT = Path(__file__).parents[2]


def test_flop_count_matches_torch_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = Autoencoder(latent_dim=32, encoder_channels=4, resolution=32, decoder_widths=[64, 48, 16])
    counts = autoencoder_flops(32, 4, [64, 48, 16], 32)
    voxels, points = torch.rand(2, 1, 32, 32, 32), torch.rand(2, 100, 3) - 0.5
    with FlopCounterMode(display=False) as counter:
        model(voxels, points)
    expected = 2 * 100 * counts["decoder_per_point"] + 2 * (counts["decoder_per_shape"] + counts["encoder_per_shape"])
    assert counter.get_total_flops() == expected
    assert step_flops(counts, 2, 100) == 3 * expected


def test_full_size_flops_are_the_papers_figures():
    counts = autoencoder_flops(256, 32, [1024, 1024, 1024, 512, 256, 128], 64)
    assert counts["decoder_per_point"] == pytest.approx(5.58e6, rel=1e-3)  # "about 5.6 MFLOP per point"
    assert counts["encoder_per_shape"] == pytest.approx(2.02e9, rel=1e-2)  # "about 2 GFLOP per shape at 64^3"


def sphere(points):
    return (0.3 - points.norm(dim=-1) + 0.5).clamp(0, 1)  # 0.5 on the sphere of radius 0.3


def test_imnet_reference_matches_a_dense_grid_of_centres():
    values, evaluated = imnet_reference_grid(sphere, frame=16, cell=4, batch_points=4096)
    axis = (torch.arange(64) + 0.5) / 64 - 0.5
    dense = sphere(torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)).numpy()
    assert ((values > 0.5) == (dense > 0.5)).all()
    assert 16 ** 3 < evaluated < 64 ** 3  # the frame, then only the queued cells


def test_inference_dtype_follows_the_override(monkeypatch):
    from recon3d.tasks.decoding import inference_dtype

    monkeypatch.setenv("RECON3D_INFERENCE_DTYPE", "fp32")
    assert inference_dtype("cpu") == torch.float32
    monkeypatch.setenv("RECON3D_INFERENCE_DTYPE", "bf16")
    assert inference_dtype("cpu") == torch.bfloat16


def test_tiny_dry_run_measures_every_section(tmp_path, launch):
    out = tmp_path / "proof"
    env = {**os.environ, "PYTHON": sys.executable}
    done = launch.run([str(ROOT / "benchmarks" / "gpu_proof.sh"), "tiny", str(out), "--workers", "0,1",
                           "--budget-s", "900"], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_proof.json").read_text())
    assert result["tiny"] and (out / "gpu_proof.log").is_file()
    assert {name: s["status"] for name, s in result["sections"].items()} == dict.fromkeys(
        ["environment", "shards", "step_fp32", "step_bf16", "step_bf16_direct_conv", "step_bf16_ddp", "step_zero2_bf16",
         "profile", "fit", "loader", "extraction", "image_encoder", "vrn", "compile"], "ok")
    assert result["profile"]["top"] and set(result["profile"]["variants_step_ms"]) == {
        "cudnn_benchmark", "cudnn_benchmark_channels_last_3d"}
    assert result["flops"]["decoder_per_point"] == autoencoder_flops(resolution=16, **TINY_MODEL)["decoder_per_point"]
    for mode in ("fp32", "bf16", "bf16_direct_conv", "bf16_ddp", "zero2_bf16"):
        step = result[f"step_{mode}"]
        assert step["step_ms"] > 0 and step["peak_mib"] > 0 and step["samples_per_s"] > 0
    assert result["step_zero2_bf16"]["strategy"] == "deepspeed_stage_2"
    assert set(result["loader"]["samples_per_s"]) == {"0", "1"}
    assert result["fit"]["logged_steps"] > 0
    extraction = result["extraction"]
    assert extraction["iou_vs_dense_fp32_min"] >= 0.99
    assert extraction["methods"]["coarse_to_fine"]["points"] <= extraction["methods"]["dense_fp32"]["points"]
    assert extraction["batch"] == 3 and extraction["batched_shapes_per_s"] > 0
    assert extraction["methods"]["mesh_end_to_end_batched"]["ms"] > extraction["methods"]["marching_cubes"]["ms"]
    assert result["compile"]["step_compiled_ms"] > 0 and result["compile"]["decoder_compiled_ms"] > 0
