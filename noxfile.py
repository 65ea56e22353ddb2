"""Developer sessions: ``nox`` runs lint, typecheck and tests; ``nox -s slow`` / ``nox -s bench``.

Each session builds its own virtualenv under ``.nox/`` with the interpreter nox runs on
(Python 3.11+), using uv when it is installed and the standard ``venv`` module otherwise.
Pass ``-R`` to reuse the virtualenvs between runs, and extra arguments after ``--``
(``nox -s tests -- -k roundtrip -x``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["lint", "typecheck", "tests"]
# "uv|venv": uv when it is found, otherwise the standard library's venv.
nox.options.default_venv_backend = "uv|venv"

ROOT = Path(__file__).parent
LINT_PATHS = ["leanmq_async", "tests", "benchmarks", "examples", "noxfile.py"]


def _dev_requirement(name: str) -> str:
    """The requirement for ``name`` as written in the ``dev`` extra of pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        dev = tomllib.load(fh)["project"]["optional-dependencies"]["dev"]
    for requirement in dev:
        if canonicalize_name(Requirement(requirement).name) == canonicalize_name(name):
            return str(requirement)
    return name


def _existing(paths: list[str]) -> list[str]:
    # An empty folder is not in a git checkout, and ruff fails on a path that is missing.
    return [p for p in paths if (ROOT / p).exists()]


@nox.session(python=None)
def tests(session: nox.Session) -> None:
    """The test suite (long fault-injection cases are skipped; see ``slow``)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=None)
def slow(session: nox.Session) -> None:
    """The whole test suite, long fault-injection cases included."""
    session.install("-e", ".[dev]")
    session.run("pytest", "--slow", *session.posargs)


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
    session.install("-e", ".[dev]")
    session.run("mypy", *session.posargs)


@nox.session(python=None)
def bench(session: nox.Session) -> None:
    """The benchmarks (``python -m benchmarks``); arguments after ``--`` go to it."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
