"""The verbs that train and use trained models on shards: train, sweep, export-latents, extract, eval (with the
aliases eval-svr, eval-vrn and eval-stereo)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from recon3d.cli import options
from recon3d.cli.options import Verb
from recon3d.stages import STAGES


def _train(args) -> int:
    from recon3d.training.bucket import bucket_path
    from recon3d.training.build import wandb_upload_command
    from recon3d.training.callbacks import requeue_signal_outside_training
    from recon3d.training.run import run

    extra = [f"loader.shards={args.shards}"] if args.shards else []
    if args.run_dir:
        extra.append(f"train.run_dir={args.run_dir}")
    with requeue_signal_outside_training():
        result = run(options.load_args_config(args, extra))
    if not result.is_global_zero:  # one summary per job, not one per process
        return 0
    name = functools.partial(bucket_path, result)  # a run folder in a bucket: files named by their URLs
    print(f"run folder: {result.location or result.run_dir}")
    print(f"stopped at epoch {result.epoch}, step {result.global_step}")
    for metric in sorted(result.metrics):
        print(f"  {metric} = {result.metrics[metric]:.4f}")
    print(f"last checkpoint: {name(result.last_checkpoint)}")
    print(f"best checkpoint ({result.monitor}): {name(result.best_checkpoint)}")
    print(f"handed on (to later stages and the evaluation): {name(result.handed_on)}")
    upload = wandb_upload_command(result.run_dir) if not result.location else ""
    if upload:
        print(f"W&B ran offline; to upload: {upload}")
    return 0


def _configure_train(parser) -> None:
    options.config(parser)
    options.shards(parser, required=False, what="shard folder (loader.shards)")
    parser.add_argument("--run-dir", default="", help="run folder (train.run_dir)")


def _sweep(args) -> int:
    from recon3d.training.sweep import run_sweep
    from recon3d.training.sweep_file import load_sweep

    spec = load_sweep(args.config[0], args.base, list(args.overrides))
    if args.storage:
        spec.storage = args.storage
    if args.num_samples:
        spec.num_samples = args.num_samples
    found = run_sweep(spec, address=args.address)
    print(f"sweep {spec.name}: {found['trials']} trial(s) in {found['folder']}")
    for row in sorted(found["rows"], key=lambda r: (r[spec.metric] is None, -(r[spec.metric] or 0)
                                                    if spec.mode == "max" else (r[spec.metric] or 0))):
        value, last = ("-" if row[key] is None else f"{row[key]:.4f}" for key in (spec.metric, "last"))
        print(f"  {spec.metric} {value} (last {last}, epoch {row['epoch']})  {row['params']}")
    print(f"best ({spec.metric} {found['metric']}): {found['best']}")
    print(f"best overrides: {found['folder']}/best.yaml (use with -c); full config: best_config.json")
    return 0


def _configure_sweep(parser) -> None:
    parser.add_argument("-c", "--config", action="append", required=True, metavar="SWEEP_YAML",
                        help="sweep file, e.g. configs/sweep/autoencoder-lr.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every trial")
    parser.add_argument("--base", action="append", default=[], metavar="YAML", help="more config files for every trial")
    parser.add_argument("--storage", default="", help="sweeps folder (default: the file's storage, runs/sweeps)")
    parser.add_argument("--num-samples", type=int, default=0, help="trials (default: the file's num_samples)")
    parser.add_argument("--address", default="", help="Ray cluster address (default: RAY_ADDRESS, else local)")


def _export_latents(args) -> int:
    from recon3d.inference.autoencoder import export_latents

    out = export_latents(args.ckpt, args.shards, name=args.name, device=args.device)
    index = json.loads((out / "latents.json").read_text())
    for split, entry in index["splits"].items():
        print(f"{split}: {entry['count']} codes of size {index['latent_dim']} -> {out / entry['codes']}")
    return 0


def _export(args) -> int:
    from recon3d.inference.export import export

    card = export(args.ckpt, args.output, onnx=not args.no_onnx)
    print(f"{args.output}: the {card['stage']} stage as weights.safetensors + card.json (recon3d "
          f"{card['recon3d_version']}; parts: {', '.join(card['parts'])})")
    for name, entry in card["onnx"].items():
        print(f"  {name}: onnxruntime within {entry['max_abs_diff']:.2g} of torch (tolerance {entry['tolerance']:g})")
    return 0


def _configure_model_export(parser) -> None:
    options.ckpt(parser)
    options.output(parser, "export folder (written under a temporary name, then renamed into place)")
    parser.add_argument("--no-onnx", action="store_true", help="weights and card only (ONNX needs recon3d[export])")


def _configure_export(parser) -> None:
    options.ckpt(parser, "autoencoder checkpoint (e.g. runs/ae/checkpoints/last.ckpt)")
    options.shards(parser)
    options.device(parser)
    parser.add_argument("--name", default="", help="folder under <shards>/latents (default: the run's name)")


def _extract(args) -> int:
    from recon3d.inference.autoencoder import extract_meshes
    from recon3d.inference.outputs import write_sheet

    rows = extract_meshes(args.ckpt, args.shards, args.output, split=args.split, keys=args.keys, count=args.count,
                          resolution=args.resolution, fmt=args.format, device=args.device)
    if args.sheet and rows:
        print(f"sheet (input view | reconstruction): {write_sheet(Path(args.sheet), args.shards, rows)}")
    for row in rows:
        print(f"{row['path']}: {row['faces']} faces, {row['evaluated']} points evaluated "
              f"(dense {row['dense']}: {row['dense'] / max(row['evaluated'], 1):.1f}x fewer), {row['seconds']:.2f} s")
    if not rows:
        print("no shape matched", file=sys.stderr)
        return 1
    return 0


def _configure_extract(parser) -> None:
    options.ckpt(parser, "autoencoder checkpoint")
    options.shards(parser)
    options.meshes(parser, resolution=256)
    options.split(parser)
    parser.add_argument("--keys", nargs="*", default=[], help="sample keys (default: the first --count of --split)")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--sheet", default="", help="also write a PNG: input view beside each reconstruction")


EVAL_OPTIONS = ("resolution", "iou_resolution", "draws", "real")  # stage options `recon3d eval` offers


def _eval(args, expect: str = "") -> int:
    """A checkpoint or run folder in a bucket is evaluated from a local copy of its run folder, and the tables and
    logs it gains go back to the bucket."""
    from recon3d.storage import is_object_url, mirrored

    if not is_object_url(args.ckpt):
        return _eval_here(args, expect)
    run_url, _, inside = args.ckpt.partition("/checkpoints/")
    run_url = run_url.rstrip("/")
    with mirrored(run_url, only=("eval", "logs")) as local:
        args.ckpt = str(local / "checkpoints" / inside) if inside else str(local)
        return _eval_here(args, expect, "" if args.output else f"{run_url}/eval")


def _eval_here(args, expect: str, tables_at: str = "") -> int:
    """tables_at: where the tables are said to be when they are not where they are written (a bucket's run)."""
    from recon3d.inference.protocol import check_options
    from recon3d.inference.tables import eval_name, format_table, log_eval
    from recon3d.runs import run_folder
    from recon3d.tasks.checkpoints import read_checkpoint, stage_of

    row = stage_of(read_checkpoint(args.ckpt), args.ckpt)
    if expect and row.name != expect:
        raise ValueError(f"{args.ckpt} is a {row.name} checkpoint; eval-{expect} needs a {expect} checkpoint "
                         f"(`recon3d eval --ckpt` takes any)")
    inference = row.inference_module()
    options = {name: getattr(args, name) for name in EVAL_OPTIONS if getattr(args, name) not in (None, False)}
    check_options(inference.evaluate, row.name, options)  # an option this stage does not take is an error
    out = args.output or str(run_folder(args.ckpt) / "eval")
    summary = inference.evaluate(args.ckpt, args.shards, split=args.split, device=args.device, out_dir=out,
                                 **options)
    extras = {name: summary.pop(name) for name in [n for n, v in summary.items() if "shapes" not in v]}
    if summary:
        name = eval_name(row.name, args.split)
        log_eval(args.ckpt, name, summary)
        print(format_table(summary, inference.TABLE_COLUMNS))
        print(inference.TABLE_NOTE)
        print(f"tables: {tables_at or out}/eval_{name}.csv, .json and per-shape eval_{name}_shapes.csv")
    for name, extra in extras.items():  # results that are not a per-category table (stereo: the real pair)
        print(f"{name}: {json.dumps(extra, indent=1)}")
    return 0


def _configure_eval(parser) -> None:
    options.ckpt(parser)
    options.shards(parser, required=False, what="shard folder (a stereo model with --real can do without)")
    options.split(parser)
    options.device(parser)
    options.output(parser, "table folder (default: <run>/eval)", required=False)
    parser.add_argument("--resolution", type=int, default=None,
                        help="autoencoder, svr: the extraction grid of the surface metrics (default 128, svr 32)")
    parser.add_argument("--iou-resolution", type=int, default=None, help="autoencoder: grid of the voxel metrics "
                        "(default: the stored voxels')")
    parser.add_argument("--draws", type=int, default=None, help="gan: disjoint sets of samples (5 per reference "
                        "shape each); COV is their mean, with the lowest and highest (default 1)")
    parser.add_argument("--real", action="store_true", help="stereo: also run on scikit-image's real rectified pair "
                        "with ground-truth disparity")


def _configure_checkpoint(parser) -> None:
    parser.add_argument("action", choices=["consolidate"])
    parser.add_argument("folder", help="a DeepSpeed (ZeRO) checkpoint folder, e.g. runs/ae/checkpoints/last.ckpt")


def _checkpoint(args) -> int:
    from recon3d.tasks.checkpoints import consolidate, read_checkpoint, stage_of

    out = consolidate(args.folder)
    state = read_checkpoint(out)
    print(f"{out}: {stage_of(state, str(out)).name} checkpoint at step {state.get('global_step', '?')}, "
          f"{out.stat().st_size / 2**20:.1f} MiB (fp32, one file)")
    return 0


def _alias(stage: str) -> Verb:
    return Verb(f"eval-{stage}", f"the same as eval, insisting on a {stage} checkpoint", _configure_eval,
                lambda args: _eval(args, stage))


VERBS = [
    Verb("train", f"train a stage (train.stage: {' | '.join(STAGES)}); resumes from last.ckpt",
         _configure_train, _train),
    Verb("sweep", "Ray Tune over any config keys (ASHA by default); trials run like train", _configure_sweep, _sweep),
    Verb("export-latents", "z for every shape of every split, next to the shards", _configure_export,
         _export_latents),
    Verb("export", "a checkpoint -> safetensors weights, a JSON card and ONNX networks (no Lightning, no pickle "
                   "to load)", _configure_model_export, _export),
    Verb("extract", "meshes from the autoencoder (coarse-to-fine + marching cubes)", _configure_extract, _extract),
    Verb("eval", "per-category metrics of any checkpoint on a split (CSV/JSON tables); the checkpoint says its stage",
         _configure_eval, _eval),
    *[_alias(stage) for stage in STAGES],
    Verb("checkpoint", "consolidate DIR: a DeepSpeed checkpoint folder -> one fp32 file beside it (atomic)",
         _configure_checkpoint, _checkpoint),
]
