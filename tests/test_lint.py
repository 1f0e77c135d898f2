"""The repository passes ruff (pyflakes, pycodestyle, import order, imports at the top unless a lazy one says why),
with the configuration in pyproject.toml."""

import subprocess

import pytest

from tests.conftest import REPO


def test_ruff_finds_nothing():
    ruff = pytest.importorskip("ruff.__main__", reason="ruff is installed with the dev extra")
    done = subprocess.run([ruff.find_ruff_bin(), "check", "--no-cache", "--output-format", "concise", str(REPO)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
