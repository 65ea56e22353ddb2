"""Release metadata: licence, extras named by install hints, no development extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_file_is_the_apache_2_text_and_is_shipped() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert PROJECT["project"]["license"] == "Apache-2.0"
    assert PROJECT["project"]["license-files"] == ["LICENSE"]


def test_development_tools_are_a_dependency_group_not_an_extra() -> None:
    extras = PROJECT["project"]["optional-dependencies"]
    assert "dev" not in extras and "bench" not in extras
    dev = PROJECT["dependency-groups"]["dev"]
    assert any(r.startswith("pytest") for r in dev) and any(r.startswith("mypy") for r in dev)
    assert any(r.startswith("uvicorn") for r in extras["admin"])
    assert set(PROJECT["project"]["urls"]) >= {"Homepage", "Changelog"}


def test_every_install_hint_names_an_extra_that_exists() -> None:
    extras = set(PROJECT["project"]["optional-dependencies"])
    hinted = set()
    for path in (ROOT / "leanmq_async").rglob("*.py"):
        hinted |= set(re.findall(r"leanmq-async\[(\w+)\]", path.read_text()))
    hinted |= {"metrics", "tracing"}  # named through leanmq_async._extras.require(...)
    assert hinted <= extras, hinted - extras


def test_readme_has_no_relative_links() -> None:
    # PyPI renders the README away from the repository: relative links would be dead.
    readme = (ROOT / "README.md").read_text()
    assert re.findall(r"\]\((?!https?://)[^)]*\)", readme) == []
