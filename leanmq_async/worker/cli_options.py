"""The ``leanmq-worker`` command line: its options, their checks, and a child's argv."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from leanmq_async._version import __version__
from leanmq_async.worker.supervisor import WorkerSettings

if TYPE_CHECKING:
    pass


PROG = "leanmq-worker"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
FORCE_EXIT_TIMEOUT = 3.0
"""Seconds a forced shutdown may take (flushing acks of finished messages) before
the process is ended without further cleanup."""

ORPHAN_CHECK_INTERVAL = 1.0
LOG_LEVELS = ("debug", "info", "warning", "error")

_EPILOG = """\
The import string names a LeanMQ client (all its handlers run), a Queue, or a list or
tuple of Queues (only their handlers run), e.g. "myapp.tasks:mq".

signals: the first SIGINT/SIGTERM stops fetching and gives in-flight handlers
--grace-period seconds; a second one exits at once (their messages stay pending).

exit codes: 0 clean shutdown (--check: healthy), 1 runtime failure (--check: unhealthy),
2 command-line or application error, 128+N forced exit by a second signal N.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``leanmq-worker``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run the message handlers of a leanmq_async application.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", metavar="MODULE:ATTR", help="the LeanMQ client or queue(s) to run")
    parser.add_argument(
        "--url",
        help="Redis URL, exported as LEANMQ_URL before the app is imported "
        "(used by LeanMQ() when no url is passed)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="messages handled at once per handler (overrides the handlers' concurrency)",
    )
    parser.add_argument(
        "--grace-period",
        type=_seconds,
        metavar="S",
        help="seconds in-flight handlers get to finish at shutdown "
        f"(default: {WorkerSettings().grace_period:g})",
    )
    parser.add_argument(
        "--startup-timeout",
        type=_seconds,
        metavar="S",
        help="seconds start-up retries while Redis is unreachable before exiting 1 "
        f"(default: {WorkerSettings().startup_timeout:g})",
    )
    parser.add_argument(
        "--burst", action="store_true", help="handle what is queued (and its retries), then exit"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="ping Redis, print a JSON health report, exit 0 if healthy, else 1",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="number of worker processes, supervised by this one (default: 1)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="development: restart the worker when a .py file under the current "
        "directory (or --app-dir) changes",
    )
    parser.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="directory put first on sys.path to import the app from (default: .)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="level of leanmq_async's events (debug shows each message; default: info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="one line per event on stderr: key=value text, or a JSON object (default: console)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs the metrics extra); "
        "with --workers N, process i serves PORT+i",
    )
    parser.add_argument(
        "--metrics-host",
        default="0.0.0.0",  # all interfaces: Prometheus scrapes from another host
        metavar="HOST",
        help="address the metrics server listens on (default: 0.0.0.0)",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="OpenTelemetry CONSUMER spans around handlers, configured from the OTEL_* "
        "environment (needs the tracing extra and opentelemetry-sdk)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop (auto: uvloop when it is installed)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def child_argv(args: argparse.Namespace, slot: int | None = None) -> list[str]:
    """This command line for a child process (no --workers/--reload; --url is in env).

    ``slot``: the child's index in a ``--workers`` pool (its metrics port is PORT+slot).
    """
    argv = [
        args.app,
        "--app-dir",
        str(Path(args.app_dir).resolve()),
        "--log-level",
        args.log_level,
        "--log-format",
        args.log_format,
        "--loop",
        args.loop,
    ]
    if args.concurrency is not None:
        argv += ["--concurrency", str(args.concurrency)]
    if args.grace_period is not None:
        argv += ["--grace-period", repr(args.grace_period)]
    if args.startup_timeout is not None:
        argv += ["--startup-timeout", repr(args.startup_timeout)]
    if args.burst:
        argv.append("--burst")
    if args.tracing:
        argv.append("--tracing")
    if args.metrics_port is not None:
        argv += ["--metrics-host", args.metrics_host]
        if slot is not None:  # --workers: one port per process
            argv += ["--metrics-port", str(args.metrics_port + slot)]
        else:
            argv += ["--metrics-port", str(args.metrics_port)]
    return argv
