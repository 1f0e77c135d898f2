"""Release basics: a license a site's legal review can read, a changelog whose newest entry is the version the
package reports, and that version written in one place."""

import re
from pathlib import Path

import pytest

import recon3d

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (recon3d runs on 3.10 too)

REPO = Path(__file__).resolve().parents[1]


def test_license_is_apache_2_and_declared():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


def test_the_changelog_leads_with_the_packages_version():
    versions = re.findall(r"^## (\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(), flags=re.M)
    assert versions and versions[0] == recon3d.__version__
    assert len(set(versions)) == len(versions)


def test_the_version_is_written_once():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "recon3d.__version__"}
