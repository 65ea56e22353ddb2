"""What every ``leanmq`` command shares: exit codes, argument types, output, registration."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ


__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "CommandRun",
    "Commands",
    "UsageError",
    "age",
    "count_type",
    "err",
    "num",
    "out",
    "positive_int",
    "positive_seconds",
    "print_json",
    "seconds_type",
    "short",
    "table",
    "when",
]

PROG = "leanmq"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A usage problem found after parsing (exit 2)."""


def non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


seconds_type = non_negative(float)
count_type = non_negative(int)


def positive_seconds(text: str) -> float:
    value = seconds_type(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")


def print_json(value: Any) -> None:
    out(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, numbers right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            numeric = i > 0 and (cell.replace(",", "").replace(".", "").isdigit() or cell == "-")
            out.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


CommandRun = Callable[["LeanMQ", argparse.Namespace], Coroutine[Any, Any, int]]
"""What runs a parsed command: the client and the arguments in, the exit code out."""


class Commands:
    """Where a command module adds its command(s): ``add_parser(commands)`` calls :meth:`add`."""

    def __init__(self, sub: Any, common: argparse.ArgumentParser) -> None:
        self._sub = sub
        self.common = common
        """The options every command accepts (``--url``, ``--json`` ...), as a parent parser."""

    def add(self, name: str, text: str, run: CommandRun) -> argparse.ArgumentParser:
        """A subcommand ``name`` (help ``text``) that ``run`` runs; add its arguments to it."""
        parser: argparse.ArgumentParser = self._sub.add_parser(
            name, help=text, description=text, parents=[self.common]
        )
        parser.set_defaults(run=run)
        return parser
