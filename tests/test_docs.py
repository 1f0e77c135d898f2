"""The docs: the site builds with `mkdocs build --strict` (offline: no web fonts, no inventories), every page is in
its navigation, and the README stays a first-hour page whose table of verbs is the CLI's."""

import logging
import re

import pytest

from tests.conftest import REPO

DOCS = REPO / "docs"


def test_the_site_builds_strictly(tmp_path, monkeypatch):
    """Broken links, missing anchors, a snippet of a missing file or an API docstring griffe cannot read fail."""
    pytest.importorskip("mkdocs", reason="the docs extra (also in dev): pip install -e '.[docs]'")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    monkeypatch.chdir(REPO)  # snippets and mkdocstrings resolve paths from the repository root
    site = tmp_path / "site"
    logger = logging.getLogger("mkdocs")
    handlers = list(logger.handlers)
    try:
        build(load_config(str(REPO / "mkdocs.yml"), site_dir=str(site), strict=True))
    finally:
        logger.handlers[:] = handlers  # build() leaves its strict-mode warning counter on the logger
    api = (site / "api" / "index.html").read_text()
    assert "ShardDataModule" in api and "register_stage" in api and "StageInference" in api


def test_every_page_is_in_the_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert pages and [p for p in pages if f": {p}" not in nav] == []


def test_the_readme_is_a_first_hour_page():
    text = (REPO / "README.md").read_text()
    assert text.count("\n") <= 200
    for heading in ("## Install", "## The main job", "## The tests", "## The verbs", "## Layout", "## Adding a model"):
        assert heading in text, heading
    for link in re.findall(r"\]\(([^)#]+)", text):  # every local link goes somewhere
        assert (REPO / link).exists() or link.startswith("http"), link


def test_the_readmes_verbs_are_the_cli_verbs():
    from recon3d.cli.main import verbs
    from recon3d.stages import STAGES

    text = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `recon3d ([a-z-]+)` \|", text, re.M))
    aliases = {f"eval-{stage}" for stage in STAGES}  # named once, in the eval row
    assert listed == {verb.name for verb in verbs()} - aliases


def test_figures_live_in_results():
    """Measured figures are in docs/results.md, dated: every table there has the five columns, and no other page
    quotes a speed."""
    results = (DOCS / "results.md").read_text()
    heads = re.findall(r"^\| date \| commit \| machine \| command \| figures \|$", results, re.M)
    assert len(heads) == results.count("\n## ") >= 5
    for row in re.findall(r"^\| (\d{4}-\d\d-\d\d) \| ([^|]+) \|", results, re.M):
        assert re.fullmatch(r"\s*[0-9a-f]{7}\s*", row[1]), row
    timing = re.compile(r"\b\d+(\.\d+)? ?(ms|s) (per|against|instead)\b|\b\d+(\.\d+)?x (faster|slower)\b")
    for page in [REPO / "README.md", *DOCS.glob("*.md")]:
        if page.name != "results.md":
            assert not timing.search(page.read_text()), (page.name, timing.search(page.read_text()).group(0))
