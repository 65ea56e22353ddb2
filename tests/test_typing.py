"""The public types hold under mypy --strict: typed queues, messages and handler options.

``tests/typing/typed_queues_ok.py`` must type-check; every line of
``tests/typing/typed_queues_bad.py`` marked ``# E: <code>`` must be reported with that code
(and nothing else may be).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "typing"
ROOT = Path(__file__).parent.parent


def mypy(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
            "--cache-dir", str(tmp_path / "cache"), str(path.relative_to(ROOT)),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.timeout(600)
def test_typed_usage_passes_mypy_strict(tmp_path: Path) -> None:
    result = mypy(HERE / "typed_queues_ok.py", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_misuse_fails_mypy_with_the_expected_errors(tmp_path: Path) -> None:
    path = HERE / "typed_queues_bad.py"
    expected = {
        (n, m.group(1))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if (m := re.search(r"# E: ([\w-]+)", line))
    }
    result = mypy(path, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    reported = {
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r":(\d+): error: .*\[([\w-]+)\]$", result.stdout, re.MULTILINE)
    }
    # A decorator mypy cannot match also makes the function untyped: that follows.
    reported = {(n, code) for n, code in reported if code != "untyped-decorator"}
    assert reported == expected, result.stdout
    assert '"Order" has no attribute "amont"' in result.stdout
    assert 'Unexpected keyword argument "concurency"' in result.stdout
