"""The house's shape: imports point one way floor by floor, no import loops, modules and functions stay small,
`import recon3d` stays light, and tests/ mirrors recon3d/ (a newcomer finds a module's tests by its path)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recon3d"
TESTS = ROOT / "tests"
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
    ["recon3d.cli", "recon3d.__main__", "recon3d.api"],  # the doors: the command line and the Python API
]
# the package root hands on the Python API's door, recon3d.load (imported inside the function: `import recon3d` stays
# light), as `recon3d.load(path)` is what a user types
ROOT_DOORS = {"recon3d": {"recon3d.api"}}
# test files at the top of tests/ that test the house rather than one module
HOUSE_TESTS = {"test_layout.py": "this file", "test_install.py": "the install: package data, version, extras",
               "test_docs.py": "the docs site builds (mkdocs --strict) and the README's promises",
               "test_lint.py": "ruff's lint and import order over the repository",
               "test_containers.py": "the container recipes in containers/ (not a package)",
               "test_release.py": "release basics: license, changelog, the version written once"}
# folders of tests/ that mirror no package, with why
NOT_MIRRORS = {"toy": "a toy stage that tests/test_stages.py adds to the stage table"}
HELPERS = {"__init__.py", "conftest.py", "system.py", "local_slurm.py"}  # test infrastructure, not tests


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
                is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file() or \
                    (PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").is_file()
                found.add(candidate if is_module else node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {i for i in imports_of(path) if i != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_from_a_higher_floor(name):
    upward = sorted(i for i in GRAPH[name] if floor_of(i) > floor_of(name) and i not in ROOT_DOORS.get(name, ()))
    assert not upward, f"{name} (floor {floor_of(name)}) imports higher floors: {upward}"


def test_no_import_loops():
    state: dict = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import loop: " + " -> ".join(trail + [node])
        state[node] = "open"
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt in MODULES and nxt != "recon3d" and not PACKAGE.joinpath(*nxt.split(".")[1:]).is_dir():
                visit(nxt, trail + [node])  # the package's __init__ is the root, a package's its re-exports
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


def test_nothing_in_the_package_imports_the_benchmarks():
    """benchmarks/ (the GPU proof) is not installed: the package may not lean on it."""
    leaning = [name for name, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks")
               or isinstance(node, ast.Import) and any(a.name.startswith("benchmarks") for a in node.names)]
    assert not leaning, leaning


def _mirrored(folder: Path) -> Path:
    """The folder a tests/ folder mirrors: recon3d/<same path>, or benchmarks/ for tests/benchmarks."""
    relative = folder.relative_to(TESTS)
    return ROOT / "benchmarks" if relative.parts[:1] == ("benchmarks",) else PACKAGE / relative


def _test_folders() -> list:
    """tests/ and its folders, but those in NOT_MIRRORS."""
    return [TESTS] + sorted(p for p in TESTS.rglob("*") if p.is_dir() and p.name != "__pycache__"
                            and p.relative_to(TESTS).parts[0] not in NOT_MIRRORS)


def test_every_test_folder_mirrors_a_package_and_every_package_has_one():
    for folder in _test_folders():
        assert (_mirrored(folder) / "__init__.py").is_file(), \
            f"{folder.relative_to(ROOT)} mirrors no package of recon3d/ (or add it to NOT_MIRRORS, saying why)"
    packages = {p.parent for p in PACKAGE.rglob("__init__.py")} | {ROOT / "benchmarks"}
    mirrored = {_mirrored(folder) for folder in _test_folders()}
    missing = sorted(str(p.relative_to(ROOT)) for p in packages - mirrored)
    assert not missing, f"packages without a tests/ folder: {missing}"


def test_every_test_file_is_named_after_the_module_it_tests():
    """tests/<path>/test_<module>[_<aspect>].py tests recon3d/<path>/<module>.py (or its subpackage <module>/)."""
    stray = []
    for folder in _test_folders():
        target = _mirrored(folder)
        homes = {p.stem for p in target.glob("*.py") if p.stem != "__init__"} | {
            p.name for p in target.iterdir() if p.is_dir() and p.name != "__pycache__"}
        for path in sorted(folder.glob("*.py")):
            if path.name in HELPERS or (folder == TESTS and path.name in HOUSE_TESTS):
                continue
            stem = path.stem[len("test_"):] if path.name.startswith("test_") else ""
            if not any(stem == home or stem.startswith(home + "_") for home in homes):
                stray.append(str(path.relative_to(ROOT)))
    assert not stray, f"test files named after no module of the folder they mirror: {stray}"


def test_import_recon3d_stays_light():
    import subprocess
    import sys

    code = ("import sys, recon3d, recon3d.config, recon3d.stages; "
            "print([m for m in ('lightning', 'ray', 'wandb', 'deepspeed', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
