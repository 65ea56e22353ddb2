"""Release metadata: licence, extras named by install hints, no development extra; what
the wheel and the sdist ship."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

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


def test_wheel_and_sdist_ship_the_lua_scripts(tmp_path: Path) -> None:
    pytest.importorskip("hatchling")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-d", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    scripts = {f"leanmq_async/lua/{p.name}" for p in (ROOT / "leanmq_async" / "lua").glob("*.lua")}
    assert "leanmq_async/lua/prelude.lua" in scripts and len(scripts) > 10
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert scripts <= set(zf.namelist())
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        shipped = {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}
    assert scripts <= shipped
