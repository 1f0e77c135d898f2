"""The `recon3d` command: `recon3d <verb> [-c a.yaml -c b.yaml] [key=value ...]`, built from one table of verbs.

Configuration errors (unknown key, wrong type, broken rule) are reported before any work starts, with exit code 2;
so are the errors a user can fix (a missing file, an unusable input). Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from recon3d import __version__
from recon3d.config import ConfigError

USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError)


def verbs() -> list:
    """The table of verbs, in the order `recon3d --help` lists them."""
    from recon3d.cli import data_verbs, shapes, slurm_verbs, train_verbs

    return [*data_verbs.VERBS, *train_verbs.VERBS, *shapes.VERBS, *slurm_verbs.VERBS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon3d", description="Single-image 2D->3D reconstruction on a cluster")
    parser.add_argument("--version", action="version", version=f"recon3d {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in verbs():
        verb_parser = sub.add_parser(verb.name, help=verb.help, description=verb.help)
        verb.configure(verb_parser)
        if verb.run is not None:
            verb_parser.set_defaults(func=verb.run)
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
    except USER_ERRORS as err:
        print(f"recon3d: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recon3d: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
