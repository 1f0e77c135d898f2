"""`recon3d bench`: the figures an engineer needs on a new machine (prep, loader, shard bytes, a training step beside
a plain loop or under each strategy, extraction, the light field descriptor); the benchmarks live in recon3d/bench/."""

from __future__ import annotations

import argparse

from recon3d.cli import options
from recon3d.cli.options import Verb
from recon3d.errors import ConfigError


def _workers(args, default: str) -> list:
    return [int(w) for w in (args.workers or default).split(",")]


def _train_step(args) -> str:
    cfg = options.load_args_config(args)
    if not (args.strategy or args.rank_stats):
        from recon3d.bench.step import bench_train_step

        return bench_train_step(cfg, args.batch_size, args.points, args.batches, args.warmup, args.device,
                                args.compile)
    from recon3d.bench.strategies import bench_strategies, rank_stats

    strategies = args.strategy.split(",")
    if args.rank_stats:  # one rank of one strategy, started by bench_strategies in a process of its own
        rank_stats(cfg, strategies[0], args.devices, args.batch_size, args.points, args.batches, args.warmup,
                   args.device, args.rank_stats)
        return ""
    return bench_strategies(cfg, strategies, args.devices, args.batch_size, args.points, args.batches, args.warmup,
                            args.device)


def _extract(args) -> str:
    if not args.ckpt:
        raise ConfigError("bench extract needs --ckpt (and a shard folder as target)")
    import torch

    from recon3d.bench.extract import bench_extract

    dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    return bench_extract(args.ckpt, args.target, args.shapes, args.extract_resolution, args.device, dtype,
                         args.full_size)


def _lfd(args) -> str:
    from recon3d.bench.lfd import bench_lfd

    return bench_lfd(options.load_args_config(args, [f"source.root={args.target}"] if args.target else []), args.limit)


def _prep(args) -> str:
    from recon3d.bench.prep import bench_prep

    cfg = options.load_args_config(args, [f"source.root={args.target}"] if args.target else [])
    return bench_prep(cfg, args.limit or 12, _workers(args, "1,2"))


def _loader(args) -> str:
    from recon3d.bench.loader import bench_loader

    return bench_loader(args.target, args.stage, _workers(args, "0,1,2"), args.batches, args.batch_size,
                        args.resolution, args.repeats)


def _shards(args) -> str:
    from recon3d.bench.shards import bench_shards

    return bench_shards(args.target)


BENCHMARKS = {"prep": [_prep], "loader": [_loader], "shards": [_shards], "data": [_loader, _shards],
              "train-step": [_train_step], "extract": [_extract], "lfd": [_lfd]}


def _bench(args) -> int:
    for benchmark in BENCHMARKS[args.what]:
        figures = benchmark(args)
        if figures:
            print(figures)
    return 0


def _configure_bench(bench) -> None:
    bench.add_argument("what", choices=list(BENCHMARKS))
    bench.add_argument("target", nargs="?", default="", help="prep, lfd: input folder; loader/shards: shard folder")
    options.config(bench)
    bench.add_argument("--workers", default="", help="comma-separated worker counts (prep: 1,2; loader: 0,1,2)")
    bench.add_argument("--limit", type=int, default=0, help="inputs to use (prep: 12 when 0; lfd: all)")
    bench.add_argument("--stage", default="autoencoder", choices=["autoencoder", "image"])
    bench.add_argument("--batches", type=int, default=30)
    bench.add_argument("--repeats", type=int, default=3, help="loader: runs per setting (the median is printed)")
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument("--resolution", type=int, default=64, help="loader: point set to read")
    bench.add_argument("--points", type=int, default=8192, help="train-step: points per shape")
    bench.add_argument("--warmup", type=int, default=3, help="train-step: untimed steps")
    bench.add_argument("--strategy", default="", help="train-step: comma-separated strategies to compare, e.g. "
                       "ddp,deepspeed_stage_2,deepspeed_stage_3 (each in its own process group of --devices ranks)")
    bench.add_argument("--devices", type=int, default=1, help="train-step --strategy: ranks per strategy")
    bench.add_argument("--compile", action="store_true",
                       help="train-step: also both steps under torch.compile (the task with train.compile=on)")
    bench.add_argument("--rank-stats", default="", help=argparse.SUPPRESS)  # internal: one rank's figures
    options.device(bench)
    options.ckpt(bench, "extract: autoencoder checkpoint", required=False)
    bench.add_argument("--shapes", type=int, default=3, help="extract: shapes to time")
    bench.add_argument("--extract-resolution", type=int, default=256, help="extract: grid cells per edge")
    bench.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                       help="extract: coarse-to-fine's decoder precision (auto: bf16 where the device computes it "
                       "natively)")
    bench.add_argument("--full-size", action="store_true",
                       help="extract: also time both algorithms at a full-size decoder's cost (IM-NET's widths)")


VERBS = [Verb("bench", "print speed and size figures (prep, loader, shards, data = loader + shards, train-step, "
              "extract, lfd)", _configure_bench, _bench)]
