"""The house's shape: imports point one way floor by floor, no import loops, modules and functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recon3d"
# Lower floors never import higher ones; a module may import its own floor (without loops) and any floor below.
FLOORS = [
    ["recon3d", "recon3d.errors", "recon3d.files", "recon3d.hardware", "recon3d.stages", "recon3d.runs"],
    ["recon3d.config"],
    ["recon3d.geometry"],
    ["recon3d.models", "recon3d.data"],
    ["recon3d.tasks"],
    ["recon3d.training"],
    ["recon3d.inference"],
    ["recon3d.workflows", "recon3d.bench", "recon3d.cluster"],
    ["recon3d.cli", "recon3d.__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(name: str) -> int:
    best, floor = -1, None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), level
    assert floor is not None, f"{name} is on no floor: add it to FLOORS"
    return floor


def imports_of(path: Path) -> set:
    """Every recon3d module this file imports, at any depth of the file (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("recon3d")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recon3d"):
            for alias in node.names:  # `from recon3d.data import schema` imports the module recon3d.data.schema
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file()
                          else node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {i for i in imports_of(path) if i != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_from_a_higher_floor(name):
    upward = sorted(i for i in GRAPH[name] if floor_of(i) > floor_of(name))
    assert not upward, f"{name} (floor {floor_of(name)}) imports higher floors: {upward}"


def test_no_import_loops():
    state: dict = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import loop: " + " -> ".join(trail + [node])
        state[node] = "open"
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt in MODULES and nxt != "recon3d":  # the package's __init__ is the root, imported by all
                visit(nxt, trail + [node])
        state[node] = "done"

    for name in sorted(MODULES):
        visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    source = MODULES[name].read_text()
    assert source.count("\n") <= 400, f"{name}: {source.count(chr(10))} lines (at most 400)"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 50, f"{name}.{node.name}: {length} lines (at most 50)"


def test_import_recon3d_stays_light():
    import subprocess
    import sys

    code = ("import sys, recon3d, recon3d.config, recon3d.stages; "
            "print([m for m in ('lightning', 'ray', 'wandb', 'deepspeed', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
