"""`recon3d slurm`: the installed sbatch templates (where, submit with the log folder made) and the whole method as
dependent jobs."""

from __future__ import annotations

import argparse

from recon3d.cli.options import Verb


def _configure(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    where = sub.add_parser("template", help="print the path of an installed template (copy it to edit)")
    where.add_argument("name", help="train | shards | sweep")
    where.set_defaults(func=_template)
    submit = sub.add_parser("submit", help="sbatch a template, creating its log folder first",
                            description="recon3d slurm submit NAME [sbatch options] -- [arguments of the job]")
    submit.add_argument("name", help="train | shards | sweep, or a path to an sbatch script")
    submit.add_argument("rest", nargs=argparse.REMAINDER, help="sbatch options, then -- and the job's arguments")
    submit.set_defaults(func=_submit)
    chain = sub.add_parser("pipeline", help="the stage table as dependent jobs (autoencoder, vrn, stereo -> "
                           "export-latents -> svr, gan -> eval); prints their ids")
    chain.add_argument("-c", "--config", action="append", default=[], metavar="YAML", help="config for every stage")
    chain.add_argument("--stage-config", action="append", default=[], metavar="STAGE=YAML",
                       help="config for one stage, e.g. svr=configs/train/svr-cpu-small.yaml")
    chain.add_argument("--shards", required=True, help="shard folder")
    chain.add_argument("--stages", default="", help="comma-separated stages to chain (default: every stage the "
                       "shards can feed)")
    chain.add_argument("--out", required=True, help="folder of the runs (<out>/<stage>), logs and eval tables")
    chain.add_argument("--nodes", type=int, default=1)
    chain.add_argument("--ntasks-per-node", type=int, default=1, help="one per device")
    chain.add_argument("--cpus-per-task", type=int, default=8)
    chain.add_argument("--sbatch", default="", help="more sbatch options for every job, e.g. '--partition=gpu "
                       "--account=me --gpus-per-node=4'")
    chain.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every stage")
    chain.set_defaults(func=_pipeline)


def _template(args) -> int:
    from recon3d.cluster.slurm import template

    print(template(args.name))
    return 0


def _submit(args) -> int:
    from recon3d.cluster.slurm import sbatch, template

    rest = list(args.rest)
    cut = rest.index("--") if "--" in rest else len(rest)
    print(sbatch(rest[:cut], template(args.name), rest[cut + 1:]))
    return 0


def _pipeline(args) -> int:
    import shlex

    from recon3d.cluster.slurm import submit_pipeline

    per_stage = dict(item.split("=", 1) for item in args.stage_config if "=" in item)
    jobs = submit_pipeline(shards=args.shards, out=args.out, configs=args.config, stage_configs=per_stage,
                           overrides=args.overrides, nodes=args.nodes, tasks_per_node=args.ntasks_per_node,
                           cpus_per_task=args.cpus_per_task, sbatch_args=shlex.split(args.sbatch),
                           stages=[s for s in args.stages.split(",") if s])
    for name, job in jobs.items():
        print(f"{name} {job}")
    return 0


VERBS = [Verb("slurm", "SLURM: template NAME | submit NAME [sbatch options] -- [job arguments] | pipeline "
              "(every stage as dependent jobs)", _configure)]
