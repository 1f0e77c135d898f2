"""The errors recon3d raises for things a user can act on; the CLI turns each into one line and an exit code
(recon3d/cli/main.py)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


class RunError(RuntimeError):
    """A run stopped for a reason the user can act on (e.g. a NaN loss): the CLI prints the message, exits 1."""


class Stopped(Exception):
    """Work stopped on a signal with what it had done saved, so that the same command resumes it: the CLI prints
    the message and exits 128 + the signal's number, as a signalled process would (schedulers see it was stopped)."""

    def __init__(self, signum: int, message: str) -> None:
        self.signum = signum
        super().__init__(message)
