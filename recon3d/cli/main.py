"""The `recon3d` command: `recon3d <verb> [-c a.yaml -c b.yaml] [key=value ...]`, built from one table of verbs.

Configuration errors (unknown key, wrong type, broken rule) are reported before any work starts, with exit code 2;
so are the errors a user can fix (a missing file, an unusable input). A run that stops for a reason the user can act
on (a NaN loss, a full disk) prints one line and exits 1. `--debug` (or RECON3D_DEBUG=1) shows the traceback of any
of them. Anything else is a bug and keeps its traceback. A signal that stops work with it saved (SIGTERM or Ctrl-C
in a training stage, the demo or a sweep) prints what was saved and exits 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import List, Optional

from recon3d import __version__
from recon3d.cli.options import resolve_device
from recon3d.errors import ConfigError, RunError, Stopped

USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError)
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # full disk, quota, read-only file system


def verbs() -> list:
    """The table of verbs, in the order `recon3d --help` lists them."""
    from recon3d.cli import bench_verbs, data_verbs, shapes, slurm_verbs, train_verbs

    return [*data_verbs.VERBS, *train_verbs.VERBS, *shapes.VERBS, *bench_verbs.VERBS, *slurm_verbs.VERBS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon3d", description="Single-image 2D->3D reconstruction on a cluster")
    parser.add_argument("--version", action="version", version=f"recon3d {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error (or RECON3D_DEBUG=1)")
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in verbs():
        verb_parser = sub.add_parser(verb.name, help=verb.help, description=verb.help)
        verb.configure(verb_parser)
        if verb.run is not None:
            verb_parser.set_defaults(func=verb.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answered before the verbs' parsers are built
        print(f"recon3d {__version__}")
        return 0
    debug = "--debug" in argv  # anywhere on the line, not only before the verb
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come in several groups between options (e.g. from a launcher script)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _run(args, debug or os.environ.get("RECON3D_DEBUG", "") not in ("", "0"))
    except Stopped as stop:  # a signal, with the work saved: not an error
        print(f"recon3d: {stop}", file=sys.stderr)
        return 128 + stop.signum


def _run(args, debug: bool) -> int:
    if debug:
        return _call(args)
    try:
        return _call(args)
    except ConfigError as err:
        print(f"recon3d: config error: {err}", file=sys.stderr)
        return 2
    except USER_ERRORS as err:
        print(f"recon3d: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"recon3d: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        print(f"recon3d: {err.strerror}: {err.filename or 'writing'}; free space (or pick another folder) and "
              "rerun: finished work is kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recon3d: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _call(args) -> int:
    """The verb, with --device resolved (auto) and checked (cuda where there is one) first."""
    if getattr(args, "device", None):
        args.device = resolve_device(args.device)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
