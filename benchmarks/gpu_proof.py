"""The GPU proof (benchmarks/gpu_proof.sh): recon3d measured on one GPU, section by section, into one JSON.

`python -m benchmarks.gpu_proof run --out DIR` builds a small shard set from procedural shapes, then measures
the full-size autoencoder's training step (fp32; bf16-mixed alone, under DDP and under DeepSpeed ZeRO-2, each in its
own process so that peak memory is its own), torch.compile on and off, a short real training run (its checkpoint
gives the extraction a decoder with surfaces), the loader with several worker counts beside the step's appetite,
extraction at 256^3 (coarse-to-fine, dense, IM-NET's frame + cell queue; 64 shapes at once with marching cubes on
the GPU, end to end, against the 200 shapes/s target), and the image encoder and VRN steps.
DIR/gpu_proof.json is rewritten (atomically) after every section, so a run cut short keeps what it measured; each
section's failure is recorded with its message and the next one runs. `--tiny` does all of it on the CPU at toy
sizes in a few minutes (the test that keeps this script from rotting).

FLOPs (the MFU convention): a training step is 3 x the forward FLOPs (forward + backward, which costs about twice
the forward); forward FLOPs count 2 per multiply-add of every Linear/Conv3d: the decoder per point (the first
layer's 3 point inputs and every later layer), the decoder per shape (the first layer's z part, computed once per
shape), the encoder per shape (each convolution's output voxels x input channels x output channels x 4^3).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import torch

import recon3d
from benchmarks.gpu_parts import PARTS, STEP_MODES, autoencoder_flops, child, log, peak_tflops, proof_config, sizes
from recon3d.bench.timing import loader_rate
from recon3d.config import to_dict
from recon3d.data.loading.datamodule import ShardDataModule
from recon3d.data.loading.shards import load_manifest
from recon3d.files import atomic_write
from recon3d.geometry.procedural import CATEGORIES, write_procedural_meshes
from recon3d.tasks.decoding import inference_dtype


class Proof:
    """The results under construction: sections, each timed, failures recorded, JSON rewritten after each."""

    def __init__(self, out: Path, tiny: bool, budget_s: float, only: Sequence[str] = ()) -> None:
        self.out, self.tiny, self.deadline, self.only = out, tiny, time.monotonic() + budget_s, set(only)
        self.results: dict = {"format": "recon3d-gpu-proof/1", "tiny": tiny, "sections": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, run: Callable[[], dict], needs_s: float = 0.0) -> None:
        if self.only and name not in self.only:
            return
        if self.left() < needs_s:
            self.results["sections"][name] = {"status": f"skipped: {self.left():.0f} s left, needs about {needs_s:.0f}"}
            log(f"== {name}: skipped ({self.left():.0f} s left)")
        else:
            log(f"== {name} ({self.left():.0f} s left)")
            start = time.perf_counter()
            try:
                self.results[name] = run()
                status = "ok"
            except Exception as err:  # a failed section is a result too; the others still run
                traceback.print_exc()
                status = f"failed: {type(err).__name__}: {str(err).strip().splitlines()[-1:] or ''}"
            self.results["sections"][name] = {"status": status, "seconds": round(time.perf_counter() - start, 2)}
            log(f"   {name}: {status} in {self.results['sections'][name]['seconds']} s")
            if name in self.results:
                log("   " + json.dumps(self.results[name], default=str)[:2000])
        atomic_write(self.out / "gpu_proof.json", json.dumps(self.results, indent=1, default=str).encode())


def environment(tiny: bool, peak_override: float) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    for package in ("lightning", "deepspeed", "numpy", "webdataset", "trimesh"):
        try:
            info[package] = __import__(package).__version__
        except Exception as err:
            info[package] = f"missing ({type(err).__name__})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    else:
        info["device"] = "cpu"
    info["peak_bf16_tflops"] = peak_tflops(info["device"], peak_override)
    info["cpu_inference_dtype"] = str(inference_dtype("cpu")).replace("torch.", "")
    info["recon3d"] = recon3d.__file__  # the installed wheel's under `run`, the source tree's under `tiny`
    expected = os.environ.get("RECON3D_EXPECT_INSTALLED")
    if expected and not recon3d.__file__.startswith(expected):
        raise RuntimeError(f"recon3d came from {recon3d.__file__}, not the installed wheel in {expected}")
    return info


def build_shards(root: Path, tiny: bool, workers: int) -> dict:
    """Procedural meshes -> a shard set under root (the full geometry, few views), through the CLI."""
    size = sizes(tiny)
    categories = sorted(CATEGORIES)[:size["categories"]]
    meshes = write_procedural_meshes(root / "meshes", categories, size["per_category"])
    cmd = [sys.executable, "-m", "recon3d", "shards", "build", "--root", str(root / "meshes"), "--out",
           str(root / "shards"), "--workers", str(workers), "render.views=2", "shards.samples_per_shard=8"]
    if tiny:
        cmd[5:5] = ["-c", str(Path(__file__).parents[1] / "configs" / "tiny.yaml")]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    manifest = load_manifest(root / "shards")
    return {"meshes": meshes, "samples": sum(s["samples"] for s in manifest["shards"]), "workers": workers,
            "seconds": round(time.perf_counter() - start, 2), "shards": len(manifest["shards"])}


def fit_section(root: Path, tiny: bool) -> dict:
    """A short real training run (the recon3d CLI, the loader with workers, bf16 on the GPU): its checkpoint gives
    the extraction a decoder with surfaces; its per-step points/s is the real loader + step pace."""
    size = sizes(tiny)
    run_dir = root / "fit"
    cmd = [sys.executable, "-m", "recon3d", "train", "--shards", str(root / "shards"), "--run-dir", str(run_dir)]
    overrides = [f"train.max_minutes={size['fit_minutes']}", "train.progress=log", "train.val_every_epochs=1000",
                 f"loader.points_per_sample={size['points']}", "train.lr=0.0001",
                 f"train.point_resolutions=[{size['point_resolution']}]", "train.phase_epochs=[100000]"]
    if not tiny:
        overrides += ["train.precision=bf16-mixed", "loader.num_workers=8", "loader.train_samples_per_epoch=2048"]
    cfg_file = root / "fit-config.json"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(json.dumps(to_dict(proof_config(tiny, str(root / "shards"), *overrides))))
    start = time.perf_counter()
    subprocess.run(cmd + ["-c", str(cfg_file)], check=True, stdout=subprocess.DEVNULL)
    rows = []
    for path in sorted(run_dir.glob("logs/*/metrics.csv")):
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get("train/points_per_s")]
    rates = [float(r["train/points_per_s"]) for r in rows]
    steps = max((int(r["step"]) for r in rows), default=0)
    return {"seconds": round(time.perf_counter() - start, 1), "logged_steps": steps,
            "samples_per_s_median": round(statistics.median(rates) / size["points"], 1) if rates else None,
            "last_loss": next((float(r["train/loss"]) for r in reversed(rows) if r.get("train/loss")), None)}


def loader_section(root: Path, tiny: bool, workers, step_samples_per_s) -> dict:
    """Autoencoder-stage samples/s from the local shards per worker count (the loader alone), beside the step."""
    size = sizes(tiny)
    batches = size["loader_batches"]

    def make(count):
        dm = ShardDataModule(shards=str(root / "shards"), batch_size=size["batch"], num_workers=count,
                             point_resolution=size["point_resolution"], points_per_sample=size["points"],
                             train_samples_per_epoch=(batches + 2 + count) * size["batch"] * 2)
        dm.setup()
        return lambda: iter(dm.train_dataloader())

    rates = {str(count): round(loader_rate(make(count), batches, size["batch"], 0.0), 1) for count in workers}
    result = {"batch": size["batch"], "points": size["points"], "samples_per_s": rates,
              "step_consumes_samples_per_s": step_samples_per_s}
    if step_samples_per_s:
        feeding = [int(c) for c, r in rates.items() if r >= step_samples_per_s]
        result["fewest_workers_that_feed_the_step"] = min(feeding) if feeding else None
    return result


def run_sections(proof, workers, args) -> None:
    """Every section in order; the heavy ones in child processes with what is left of the budget as timeout."""
    root, tiny = proof.out / "work", proof.tiny
    proof.section("environment", lambda: environment(tiny, args.peak_tflops))
    proof.section("shards", lambda: build_shards(root, tiny, args.build_workers or os.cpu_count() or 1))
    proof.results["flops"] = {**autoencoder_flops(resolution=sizes(tiny)["voxels"], **sizes(tiny)["model"]),
                              "step_convention": "3 x forward; 2 FLOPs per multiply-add"}
    steps = {}
    for mode in STEP_MODES:
        proof.section(f"step_{mode}", lambda mode=mode: steps.setdefault(mode, child(
            f"step_{mode}", root, tiny, proof.left())), needs_s=20)
    proof.section("profile", lambda: child("profile", root, tiny, proof.left()), needs_s=20)
    proof.section("fit", lambda: fit_section(root, tiny), needs_s=90)
    consumption = (steps.get("bf16") or steps.get("fp32") or {}).get("samples_per_s")
    proof.section("loader", lambda: loader_section(root, tiny, workers, consumption), needs_s=30)
    proof.section("extraction", lambda: child("extraction", root, tiny, proof.left()), needs_s=45)
    for what in ("image_encoder", "vrn"):
        proof.section(what, lambda what=what: child(what, root, tiny, proof.left()), needs_s=15)
    if not args.no_compile:  # last: optional, and its compilation alone can take minutes
        proof.section("compile", lambda: child("compile", root, tiny, min(proof.left(), 240)), needs_s=60)
    log("recon3d gpu proof: done")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_proof")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the whole proof into --out")
    run.add_argument("--out", required=True)
    run.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (the dry run)")
    run.add_argument("--budget-s", type=float, default=480.0, help="stop starting sections after this long")
    run.add_argument("--peak-tflops", type=float, default=0.0, help="the chip's dense bf16 peak (else by name)")
    run.add_argument("--workers", default="0,4,8,15", help="loader worker counts")
    run.add_argument("--build-workers", type=int, default=0, help="shard build processes (0: all CPUs)")
    run.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    run.add_argument("--only", default="", help="comma-separated sections to run (a rerun of some; the "
                     "extraction needs fit, every step needs shards)")
    child = sub.add_parser("part", help=argparse.SUPPRESS)  # one measurement in a fresh process (internal)
    child.add_argument("what")
    child.add_argument("--shards", required=True)
    child.add_argument("--out", required=True)
    child.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "part":
        result = PARTS[args.what](args.shards, args.tiny)
        atomic_write(Path(args.out), json.dumps(result).encode())
        return 0
    proof = Proof(Path(args.out), args.tiny, args.budget_s, [n for n in args.only.split(",") if n.strip()])
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    run_sections(proof, workers, args)
    failed = [n for n, s in proof.results["sections"].items() if s["status"].startswith("failed")]
    log(f"recon3d gpu proof: {len(proof.results['sections']) - len(failed)} of {len(proof.results['sections'])} "
        f"sections ran; results in {proof.out / 'gpu_proof.json'}"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
