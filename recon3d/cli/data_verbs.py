"""The verbs that make and inspect data, and the whole job: shards (build, verify, upgrade, show, summary), demo,
report, config."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from recon3d.cli import options
from recon3d.cli.options import Verb
from recon3d.errors import ConfigError


def _shards_build(args) -> int:
    from recon3d.data.tools.verify import summarise
    from recon3d.data.writing.writer import build_shards

    extra = []
    if args.root:
        extra.append(f"source.root={args.root}")
    if args.out:
        extra.append(f"shards.out_dir={args.out}")
    if args.workers:
        extra.append(f"shards.workers={args.workers}")
    cfg = options.load_args_config(args, extra)
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
    print(result.summary or summarise(result.out_dir))
    print(f"prepared {result.prepared} input(s) in {result.seconds:.1f} s with {cfg.shards.workers} worker(s)")
    if result.manifest["samples"] == 0:
        print(f"recon3d: no input became a sample ({result.manifest.get('rejects', 0)} rejected; the reasons are in "
              f"{Path(result.out_dir) / 'rejects.jsonl'})", file=sys.stderr)
        return 1
    return 0


def _shards_verify(args) -> int:
    from recon3d.data.tools.verify import verify_shards
    from recon3d.storage import mirrored

    with mirrored(args.dir, send=False) as local:  # a shard set in a bucket is verified in a local copy
        report = verify_shards(local, decode=not args.quick)
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    for note in report.notes:
        print(f"NOTE {note}")
    print(f"{args.dir}: {report.shards} shards, {report.samples} samples, {report.bytes / 2**20:.1f} MiB: "
          f"{'OK' if report.ok else f'{len(report.problems)} problem(s)'}")
    return 0 if report.ok else 1


def _shards_upgrade(args) -> int:
    from recon3d.data.writing.writer import upgrade_shards

    lines = upgrade_shards(args.dir)
    print("\n".join(lines))
    return 1 if any("not indexed" in line for line in lines) else 0


def _shards_show(args) -> int:
    from recon3d.data.tools.contact_sheet import contact_sheet

    out = args.output or os.path.join(args.dir, "contact_sheet.png")
    print(contact_sheet(args.dir, out, count=args.count, views=args.views, split=args.split))
    return 0


def _shards_summary(args) -> int:
    from recon3d.data.tools.verify import summarise
    from recon3d.storage import mirrored

    with mirrored(args.dir, fetch=(".json", ".jsonl"), send=False) as local:  # a bucket's: its records only
        print(summarise(local).replace(str(local), str(args.dir)))
    return 0


def _demo(args) -> int:
    from recon3d.workflows.demo import demo_config, run_demo

    extra = [f"shards.workers={args.workers}"] if args.workers else []
    if args.out:
        extra.append(f"demo.out_dir={args.out}")
    cfg = demo_config(args.config, list(args.overrides) + extra)  # embedded defaults (and GPU profile), then yours
    print(f"demo profile: {cfg.demo.profile}" + (" (configs/demo-gpu.yaml over demo.yaml)"
                                                  if cfg.demo.profile == "gpu" else ""))
    return run_demo(cfg, meshes=args.meshes, progress=not args.no_progress)


def _report(args) -> int:
    from recon3d.workflows.report import write_report

    print(write_report(args.run_dir))
    return 0


def _show_config(args) -> int:
    import json

    from recon3d.config import to_dict

    print(json.dumps(to_dict(options.load_args_config(args)), indent=2))
    return 0


def _configure_build(build) -> None:
    options.config(build)
    build.add_argument("--root", default="", help="input folder or file (source.root)")
    build.add_argument("--out", default="", help="output folder (shards.out_dir)")
    build.add_argument("--workers", type=int, default=0, help="parallel processes (shards.workers)")
    build.add_argument("--part", default="", metavar="I/N",
                       help="build only part I of N of the plan (job arrays): balanced, disjoint, deterministic")
    build.add_argument("--ray", action="store_true",
                       help="prepare inputs as Ray tasks (local, or the cluster in RAY_ADDRESS); same output")
    build.add_argument("--no-progress", action="store_true")


def _configure_shards(parser) -> None:
    verbs = parser.add_subparsers(dest="shards_verb", required=True)
    for verb in SHARD_VERBS:
        sub = verbs.add_parser(verb.name, help=verb.help, description=verb.help)
        verb.configure(sub)
        sub.set_defaults(func=verb.run)


def _configure_folder(parser) -> None:
    parser.add_argument("dir", help="shard folder")


def _configure_verify(parser) -> None:
    _configure_folder(parser)
    parser.add_argument("--quick", action="store_true", help="checksums and counts only, no decoding")


def _configure_show(parser) -> None:
    _configure_folder(parser)
    options.output(parser, "PNG path (default: <dir>/contact_sheet.png)", required=False)
    parser.add_argument("-n", "--count", type=int, default=8)
    parser.add_argument("--views", type=int, default=4)
    options.split(parser, default="")


def _configure_demo(parser) -> None:
    options.config(parser)
    parser.add_argument("--meshes", default="", help="use this folder of meshes instead of procedural shapes")
    parser.add_argument("--out", default="", help="run folder (demo.out_dir, default runs/demo)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallel processes (default: one per core)")
    parser.add_argument("--no-progress", action="store_true")


def _configure_report(parser) -> None:
    parser.add_argument("run_dir")


SHARD_VERBS = [
    Verb("build", "meshes/binvox/IM-NET hdf5 -> shards (resumable)", _configure_build, _shards_build),
    Verb("verify", "check every checksum, count and member against the manifest", _configure_verify, _shards_verify),
    Verb("upgrade", "give an older shard set its per-shard indexes (random access; the tars are unchanged)",
         _configure_folder, _shards_upgrade),
    Verb("show", "write a contact sheet PNG (views + voxel projections)", _configure_show, _shards_show),
    Verb("summary", "splits, categories, rejects and size of a shard folder", _configure_folder, _shards_summary),
]
VERBS = [
    Verb("demo", "the main job: shapes -> shards -> autoencoder, image encoder, latent GAN -> meshes, metrics and "
         "report.html (resumes when rerun)", _configure_demo, _demo),
    Verb("report", "(re)write report.html for a run folder (demo or single training run of any stage)",
         _configure_report, _report),
    Verb("shards", "build, verify and inspect WebDataset shards", _configure_shards),
    Verb("config", "print the resolved configuration as JSON", options.config, _show_config),
]
