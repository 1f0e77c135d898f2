"""The `recon3d` command: `recon3d <verb> [-c a.yaml -c b.yaml] [key=value ...]`.

Configuration errors (unknown key, wrong type, broken rule) are reported before any work starts, with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from recon3d import cli_shapes
from recon3d.config import ConfigError, load_config


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], metavar="YAML",
                        help="config file; several are merged left to right")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. shards.workers=2")


def _add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--ckpt, --shards and --device, shared by the commands that use a trained autoencoder."""
    parser.add_argument("--ckpt", required=True, help="autoencoder checkpoint (e.g. runs/ae/checkpoints/last.ckpt)")
    parser.add_argument("--shards", required=True, help="shard folder")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def _config(args: argparse.Namespace, extra: Optional[List[str]] = None):
    return load_config(args.config, list(args.overrides) + (extra or []))


def _shards_build(args) -> int:
    from recon3d.data.verify import summarise
    from recon3d.data.writer import build_shards

    extra = []
    if args.root:
        extra.append(f"source.root={args.root}")
    if args.out:
        extra.append(f"shards.out_dir={args.out}")
    if args.workers:
        extra.append(f"shards.workers={args.workers}")
    cfg = _config(args, extra)
    if not cfg.source.root:
        raise ConfigError("no input: give --root DIR or source.root=DIR")
    part = (0, 1)
    if args.part:
        try:
            index, count = (int(v) for v in args.part.split("/"))
        except ValueError:
            raise ConfigError(f"--part {args.part!r}: expected INDEX/COUNT, e.g. 3/8") from None
        part = (index, count)
    result = build_shards(cfg, progress=not args.no_progress, part=part, use_ray=args.ray)
    if args.part:
        print(f"part {part[0]}/{part[1]}: prepared {result.prepared} input(s) in {result.seconds:.1f} s")
    if not result.manifest:
        print("the manifest is written once every part is done (or rerun without --part to finish and merge)")
        return 0
    print(summarise(result.out_dir))
    print(f"prepared {result.prepared} input(s) in {result.seconds:.1f} s with {cfg.shards.workers} worker(s)")
    return 0


def _shards_verify(args) -> int:
    from recon3d.data.verify import verify_shards

    report = verify_shards(args.dir, decode=not args.quick)
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    print(f"{args.dir}: {report.shards} shards, {report.samples} samples, {report.bytes / 2**20:.1f} MiB: "
          f"{'OK' if report.ok else f'{len(report.problems)} problem(s)'}")
    return 0 if report.ok else 1


def _shards_show(args) -> int:
    from recon3d.data.contact_sheet import contact_sheet

    out = args.output or os.path.join(args.dir, "contact_sheet.png")
    print(contact_sheet(args.dir, out, count=args.count, views=args.views, split=args.split))
    return 0


def _shards_summary(args) -> int:
    from recon3d.data.verify import summarise

    print(summarise(args.dir))
    return 0


def _demo(args) -> int:
    from recon3d.engine.demo import run_demo

    from recon3d.engine.demo import DEFAULTS

    extra = [f"shards.workers={args.workers}"] if args.workers else []
    if args.out:
        extra.append(f"demo.out_dir={args.out}")
    cfg = load_config([DEFAULTS, *args.config], list(args.overrides) + extra)  # embedded defaults, then yours
    return run_demo(cfg, meshes=args.meshes, progress=not args.no_progress)


def _report(args) -> int:
    from recon3d.engine.report import write_report

    print(write_report(args.run_dir))
    return 0


def _bench(args) -> int:
    from recon3d import bench

    if args.what == "train-step":
        print(bench.bench_train_step(_config(args), args.batch_size, args.points, args.batches, args.warmup,
                                     args.device))
        return 0
    if args.what == "lfd":
        cfg = _config(args, [f"source.root={args.target}"] if args.target else [])
        print(bench.bench_lfd(cfg, args.limit))
        return 0
    if args.what == "extract":
        if not args.ckpt:
            raise ConfigError("bench extract needs --ckpt (and a shard folder as target)")
        print(bench.bench_extract(args.ckpt, args.target, args.shapes, args.extract_resolution, args.device))
        return 0
    workers = [int(w) for w in (args.workers or ("1,2" if args.what == "prep" else "0,1,2")).split(",")]
    if args.what == "prep":
        extra = [f"source.root={args.target}"] if args.target else []
        cfg = _config(args, extra)
        print(bench.bench_prep(cfg, args.limit or 12, workers))
    else:
        if args.what in ("loader", "data"):
            print(bench.bench_loader(args.target, args.stage, workers, args.batches, args.batch_size,
                                     args.resolution, args.repeats))
        if args.what in ("shards", "data"):
            print(bench.bench_shards(args.target))
    return 0


def _train(args) -> int:
    from recon3d.engine.run import run

    extra = [f"loader.shards={args.shards}"] if args.shards else []
    if args.run_dir:
        extra.append(f"train.run_dir={args.run_dir}")
    result = run(_config(args, extra))
    if not result.is_global_zero:  # one summary per job, not one per process
        return 0
    print(f"run folder: {result.run_dir}")
    print(f"stopped at epoch {result.epoch}, step {result.global_step}")
    for name in sorted(result.metrics):
        print(f"  {name} = {result.metrics[name]:.4f}")
    print(f"last checkpoint: {result.last_checkpoint}")
    print(f"best checkpoint ({result.monitor}): {result.best_checkpoint}")
    wandb_dir = result.run_dir / "wandb"
    if wandb_dir.is_dir():
        print(f"W&B ran offline; to upload: wandb sync {wandb_dir}/offline-run-*")
    return 0


def _export_latents(args) -> int:
    from recon3d.engine.inference import export_latents

    out = export_latents(args.ckpt, args.shards, name=args.name, device=args.device)
    index = json.loads((out / "latents.json").read_text())
    for split, entry in index["splits"].items():
        print(f"{split}: {entry['count']} codes of size {index['latent_dim']} -> {out / entry['codes']}")
    return 0


def _extract(args) -> int:
    from recon3d.engine.inference import extract_meshes

    rows = extract_meshes(args.ckpt, args.shards, args.output, split=args.split, keys=args.keys, count=args.count,
                          resolution=args.resolution, fmt=args.format, device=args.device)
    if args.sheet and rows:
        from recon3d.engine.inference import write_sheet

        print(f"sheet (input view | reconstruction): {write_sheet(Path(args.sheet), args.shards, rows)}")
    for row in rows:
        print(f"{row['path']}: {row['faces']} faces, {row['evaluated']} points evaluated "
              f"(dense {row['dense']}: {row['dense'] / max(row['evaluated'], 1):.1f}x fewer), {row['seconds']:.2f} s")
    if not rows:
        print("no shape matched", file=sys.stderr)
        return 1
    return 0


def _eval(args) -> int:
    from recon3d.engine.inference import evaluate, format_table

    out = args.output or str(Path(args.ckpt).resolve().parent.parent / "eval")
    from recon3d.engine.inference import log_eval

    summary = evaluate(args.ckpt, args.shards, split=args.split, resolution=args.resolution,
                       iou_resolution=args.iou_resolution, device=args.device, out_dir=out)
    log_eval(args.ckpt, args.split, summary)
    print(format_table(summary))
    print("Chamfer-L2: IM-NET convention (squared distances, mean of both directions) x1000 on 4096 points; "
          "Chamfer-L1: OccNet (accuracy + completeness) / 2; F-score at 1/2 % of the cube edge")
    print(f"tables: {out}/eval_{args.split}.csv, .json and per-shape eval_{args.split}_shapes.csv")
    return 0


def _eval_svr(args) -> int:
    from recon3d.engine.inference import evaluate_svr, format_table

    out = args.output or str(Path(args.ckpt).resolve().parent.parent / "eval")
    summary = evaluate_svr(args.ckpt, args.shards, split=args.split, resolution=args.resolution, device=args.device,
                           out_dir=out)
    print(format_table(summary, ("shapes", "iou", "chamfer_l2_x1000", "fscore@1%", "latent_mse")))
    print(f"tables: {out}/eval_svr_{args.split}.csv, .json and per-shape eval_svr_{args.split}_shapes.csv")
    return 0


def _eval_vrn(args) -> int:
    from recon3d.engine.inference import format_table
    from recon3d.engine.view_models import evaluate_vrn

    out = args.output or str(Path(args.ckpt).resolve().parent.parent / "eval")
    summary = evaluate_vrn(args.ckpt, args.shards, split=args.split, out_dir=out, device=args.device)
    print(format_table(summary, ("shapes", "iou")))
    print(f"table: {out}/eval_vrn_{args.split}.json")
    return 0


def _eval_stereo(args) -> int:
    from recon3d.engine.inference import format_table
    from recon3d.engine.view_models import evaluate_stereo, real_pair_check

    out = args.output or str(Path(args.ckpt).resolve().parent.parent / "eval")
    if args.shards:
        summary = evaluate_stereo(args.ckpt, args.shards, split=args.split, out_dir=out, device=args.device)
        print(format_table(summary, ("shapes", "mae", "mae_copy", "mae_shift")))
        print(f"table: {out}/eval_stereo_{args.split}.json (MAE on the 0-255 scale)")
    if args.real:
        result = real_pair_check(args.ckpt, out, device=args.device)
        print(json.dumps(result, indent=1))
        print(f"pictures: {out}/real_pair.png (left | synthesised right / our disparity | true disparity)")
    if not args.shards and not args.real:
        raise ValueError("eval-stereo needs --shards DIR, --real, or both")
    return 0


def _sweep(args) -> int:
    from recon3d.sweep import load_sweep, run_sweep

    spec = load_sweep(args.config, args.base, list(args.overrides))
    if args.storage:
        spec.storage = args.storage
    if args.num_samples:
        spec.num_samples = args.num_samples
    found = run_sweep(spec, address=args.address)
    print(f"sweep {spec.name}: {found['trials']} trial(s) in {found['folder']}")
    for row in sorted(found["rows"], key=lambda r: (r[spec.metric] is None, -(r[spec.metric] or 0)
                                                    if spec.mode == "max" else (r[spec.metric] or 0))):
        value = "-" if row[spec.metric] is None else f"{row[spec.metric]:.4f}"
        print(f"  {spec.metric} {value}  epoch {row['epoch']}  {row['params']}")
    print(f"best ({spec.metric} {found['metric']}): {found['best']}")
    print(f"best overrides: {found['folder']}/best.yaml (use with -c); full config: best_config.json")
    return 0


def _show_config(args) -> int:
    import json

    from recon3d.config import to_dict

    print(json.dumps(to_dict(_config(args)), indent=2))
    return 0


def _add_demo_parser(verbs) -> None:
    demo = verbs.add_parser("demo", help="the main job: shapes -> shards -> autoencoder, image encoder, latent GAN "
                            "-> meshes, metrics and report.html (resumes when rerun)")
    _add_config_args(demo)
    demo.add_argument("--meshes", default="", help="use this folder of meshes instead of procedural shapes")
    demo.add_argument("--out", default="", help="run folder (demo.out_dir, default runs/demo)")
    demo.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="parallel processes (default: one per core)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)
    report = verbs.add_parser("report", help="(re)write report.html for a run folder (demo or single training run)")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)


def _add_shards_parsers(verbs) -> None:
    shards = verbs.add_parser("shards", help="build, verify and inspect WebDataset shards")
    shard_verbs = shards.add_subparsers(dest="shards_verb", required=True)
    build = shard_verbs.add_parser("build", help="meshes/binvox/IM-NET hdf5 -> shards (resumable)")
    _add_config_args(build)
    build.add_argument("--root", default="", help="input folder or file (source.root)")
    build.add_argument("--out", default="", help="output folder (shards.out_dir)")
    build.add_argument("--workers", type=int, default=0, help="parallel processes (shards.workers)")
    build.add_argument("--part", default="", metavar="I/N",
                       help="build only part I of N of the plan (job arrays): balanced, disjoint, deterministic")
    build.add_argument("--ray", action="store_true",
                       help="prepare inputs as Ray tasks (local, or the cluster in RAY_ADDRESS); same output")
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=_shards_build)
    verify = shard_verbs.add_parser("verify", help="check every checksum, count and member against the manifest")
    verify.add_argument("dir")
    verify.add_argument("--quick", action="store_true", help="checksums and counts only, no decoding")
    verify.set_defaults(func=_shards_verify)
    show = shard_verbs.add_parser("show", help="write a contact sheet PNG (views + voxel projections)")
    show.add_argument("dir")
    show.add_argument("-o", "--output", default="")
    show.add_argument("-n", "--count", type=int, default=8)
    show.add_argument("--views", type=int, default=4)
    show.add_argument("--split", default="", choices=["", "train", "val", "test"])
    show.set_defaults(func=_shards_show)
    summary = shard_verbs.add_parser("summary", help="splits, categories, rejects and size of a shard folder")
    summary.add_argument("dir")
    summary.set_defaults(func=_shards_summary)


def _add_bench_parser(verbs) -> None:
    bench = verbs.add_parser("bench", help="print speed and size figures (prep, loader, shards; data = both)")
    bench.add_argument("what", choices=["prep", "loader", "shards", "data", "train-step", "extract", "lfd"])
    bench.add_argument("target", nargs="?", default="", help="prep, lfd: input folder; loader/shards: shard folder")
    bench.add_argument("-c", "--config", action="append", default=[], metavar="YAML")
    bench.add_argument("overrides", nargs="*", metavar="key=value")
    bench.add_argument("--workers", default="", help="comma-separated worker counts (prep: 1,2; loader: 0,1,2)")
    bench.add_argument("--limit", type=int, default=0, help="inputs to use (prep: 12 when 0; lfd: all)")
    bench.add_argument("--stage", default="autoencoder", choices=["autoencoder", "image"])
    bench.add_argument("--batches", type=int, default=30)
    bench.add_argument("--repeats", type=int, default=3, help="loader: runs per setting (the median is printed)")
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument("--resolution", type=int, default=64, help="loader: point set to read")
    bench.add_argument("--points", type=int, default=8192, help="train-step: points per shape")
    bench.add_argument("--warmup", type=int, default=3, help="train-step: untimed steps")
    bench.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    bench.add_argument("--ckpt", default="", help="extract: autoencoder checkpoint")
    bench.add_argument("--shapes", type=int, default=3, help="extract: shapes to time")
    bench.add_argument("--extract-resolution", type=int, default=256, help="extract: grid cells per edge")
    bench.set_defaults(func=_bench)


def _add_model_parsers(verbs) -> None:
    """train, export-latents, extract, eval."""
    train = verbs.add_parser("train", help="train a stage (train.stage: autoencoder, svr, gan); resumes from last.ckpt")
    _add_config_args(train)
    train.add_argument("--shards", default="", help="shard folder (loader.shards)")
    train.add_argument("--run-dir", default="", help="run folder (train.run_dir)")
    train.set_defaults(func=_train)

    latents = verbs.add_parser("export-latents", help="z for every shape of every split, next to the shards")
    _add_checkpoint_args(latents)
    latents.add_argument("--name", default="", help="folder under <shards>/latents (default: the run's name)")
    latents.set_defaults(func=_export_latents)

    extract = verbs.add_parser("extract", help="meshes from the autoencoder (coarse-to-fine + marching cubes)")
    _add_checkpoint_args(extract)
    extract.add_argument("-o", "--output", required=True, help="folder for the mesh files")
    extract.add_argument("--keys", nargs="*", default=[], help="sample keys (default: the first --count of --split)")
    extract.add_argument("--split", default="test", choices=["train", "val", "test"])
    extract.add_argument("--count", type=int, default=8)
    extract.add_argument("--resolution", type=int, default=256)
    extract.add_argument("--format", default="obj", choices=["obj", "ply", "glb"])
    extract.add_argument("--sheet", default="", help="also write a PNG: input view beside each reconstruction")
    extract.set_defaults(func=_extract)

    evaluate = verbs.add_parser("eval", help="per-category metrics of a split (CSV/JSON tables)")
    _add_checkpoint_args(evaluate)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--resolution", type=int, default=128, help="extraction grid for the surface metrics")
    evaluate.add_argument("--iou-resolution", type=int, default=0, help="grid of the voxel metrics (0: stored)")
    evaluate.add_argument("-o", "--output", default="", help="table folder (default: <run>/eval)")
    evaluate.set_defaults(func=_eval)

    evaluate_svr = verbs.add_parser("eval-svr", help="per-category shape metrics of the image encoder on a split")
    evaluate_svr.add_argument("--ckpt", required=True, help="image-encoder checkpoint (train.stage=svr)")
    evaluate_svr.add_argument("--shards", required=True, help="shard folder")
    evaluate_svr.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate_svr.add_argument("--resolution", type=int, default=32, help="grid of the decoded shapes")
    evaluate_svr.add_argument("--device", default="cpu", help="cpu or cuda")
    evaluate_svr.add_argument("-o", "--output", default="", help="table folder (default: <run>/eval)")
    evaluate_svr.set_defaults(func=_eval_svr)

    evaluate_vrn = verbs.add_parser("eval-vrn", help="per-category IoU of a VRN's view-aligned volumes on a split")
    evaluate_stereo = verbs.add_parser("eval-stereo", help="per-category MAE of a stereo model against the copy and "
                                       "shift baselines; --real: the scikit-image motorcycle pair")
    for parser, kind in ((evaluate_vrn, "vrn"), (evaluate_stereo, "stereo")):
        parser.add_argument("--ckpt", required=True, help=f"checkpoint (train.stage={kind})")
        parser.add_argument("--shards", required=kind == "vrn", default="", help="shard folder")
        parser.add_argument("--split", default="test", choices=["train", "val", "test"])
        parser.add_argument("--device", default="cpu", help="cpu or cuda")
        parser.add_argument("-o", "--output", default="", help="table folder (default: <run>/eval)")
    evaluate_stereo.add_argument("--real", action="store_true",
                                 help="also run on scikit-image's real rectified pair with ground-truth disparity")
    evaluate_vrn.set_defaults(func=_eval_vrn)
    evaluate_stereo.set_defaults(func=_eval_stereo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon3d", description="Single-image 2D->3D reconstruction on a cluster")
    verbs = parser.add_subparsers(dest="verb", required=True)
    _add_demo_parser(verbs)
    _add_shards_parsers(verbs)
    _add_bench_parser(verbs)
    _add_model_parsers(verbs)
    cli_shapes.add_parsers(verbs)
    sweep = verbs.add_parser("sweep", help="Ray Tune over any config keys (ASHA by default); trials run like train")
    sweep.add_argument("-c", "--config", required=True, help="sweep file, e.g. configs/sweep/autoencoder-lr.yaml")
    sweep.add_argument("--base", action="append", default=[], metavar="YAML", help="more config files for every trial")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every trial")
    sweep.add_argument("--storage", default="", help="sweeps folder (default: the file's storage, runs/sweeps)")
    sweep.add_argument("--num-samples", type=int, default=0, help="trials (default: the file's num_samples)")
    sweep.add_argument("--address", default="", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    sweep.set_defaults(func=_sweep)
    config = verbs.add_parser("config", help="print the resolved configuration as JSON")
    _add_config_args(config)
    config.set_defaults(func=_show_config)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come in several groups between options (e.g. from a launcher script)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"recon3d: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"recon3d: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recon3d: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
