"""The one door from a test to other processes: recon3d's command line in a subprocess, Python ranks, SLURM daemons
and jobs, Ray, a browser, the GPU proof's script.

A test that asks for the `launch` fixture (itself, or through another fixture such as the SLURM test cluster) is
marked `system` when pytest collects it (tests/conftest.py), so it runs in `make test-all` and never in the fast
`make test`. A fast-tier test that starts such a process without this door fails at once, naming it: tests/conftest.py
guards subprocess.Popen in every test that is not marked `system` (`system_process`, below, says what counts).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
# programs that start daemons, jobs, ranks or a browser: only system tests start them (SLURM's query commands, such
# as scontrol, are not here: a test may stand one in with a script of its own)
SYSTEM_PROGRAMS = {"sbatch", "srun", "salloc", "slurmctld", "slurmd", "munged", "chromium", "chromium-browser",
                   "google-chrome", "torchrun", "deepspeed", "ray", "recon3d"}


def system_process(args, shell: bool = False) -> str:
    """What kind of system process a Popen command starts ("" when none): recon3d itself (its console script or
    `python -m recon3d`), a second Python interpreter running a program (a rank, a worker script; `python -c`
    snippets do not count), a SLURM daemon or command, Ray's processes, a browser, a launcher or a shell script."""
    argv = shlex.split(args) if isinstance(args, str) else [os.fspath(a) for a in args]
    if shell and argv[:1] in (["/bin/sh"], ["sh"], ["bash"]) and "-c" in argv:
        argv = shlex.split(argv[argv.index("-c") + 1])
    if not argv:
        return ""
    program = Path(argv[0]).name
    if program in SYSTEM_PROGRAMS:
        return program
    if "/ray/" in argv[0]:
        return "a Ray process"
    if program.endswith(".sh"):
        return f"the script {program}"
    if program.startswith("python") or argv[0] == sys.executable:
        if argv[1:3] == ["-m", "recon3d"] or any(a.startswith("recon3d.") for a in argv[2:3]):
            return "recon3d"
        if argv[1:2] != ["-c"]:
            return "a second Python process"
    return ""


class Launch:
    """Starts the processes of a system test (its fixture `launch` marks the test `system`)."""

    python = sys.executable

    def recon3d(self, *args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        """`python -m recon3d ARGS` from the repository root (unless cwd is given), output captured as text."""
        kwargs.setdefault("cwd", REPO)
        return subprocess.run([self.python, "-m", "recon3d", *args], capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def recon3d_popen(self, *args: str, **kwargs) -> subprocess.Popen:
        """`python -m recon3d ARGS` started in the background (a test that signals it), from the repository root."""
        kwargs.setdefault("cwd", REPO)
        return subprocess.Popen([self.python, "-m", "recon3d", *args], **kwargs)

    def run(self, command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Any command (sbatch, a browser, a script), as subprocess.run."""
        return subprocess.run(list(command), **kwargs)

    def popen(self, command: Sequence[str], **kwargs) -> subprocess.Popen:
        """Any command in the background, as subprocess.Popen."""
        return subprocess.Popen(list(command), **kwargs)

    def python_script(self, code: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        """A Python program in a fresh interpreter (a process of its own, with its own hash seed), output captured."""
        return subprocess.run([self.python, "-c", code], capture_output=True, text=True, timeout=timeout, **kwargs)

    def ranks(self, function: Callable, args: tuple, ranks: int, start_method: str = "spawn") -> None:
        """`ranks` processes running function(rank, *args), joined (torch.multiprocessing.start_processes)."""
        import torch.multiprocessing as mp

        mp.start_processes(function, args=args, nprocs=ranks, join=True, start_method=start_method)
