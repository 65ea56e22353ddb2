"""``leanmq``: inspect and operate the queues from a terminal, a cron job or a script.

    leanmq --url redis://localhost:6379/0 --prefix mq: queues
    leanmq stats                                   # depth, pending, lag, DLQ, consumers
    leanmq cron                                    # periodic jobs: next, last run, result
    leanmq health --once                           # exit 0 ok, 1 warning, 2 critical
    leanmq dlq list orders
    leanmq dlq show orders 1700000000000-0
    leanmq dlq requeue orders --all --dry-run
    leanmq dlq purge orders --confirm
    leanmq clear orders --include-dlq --confirm
    leanmq cleanup --max-age-hours 24
    leanmq force-process orders --batch-size 100
    leanmq watch --interval 2
    leanmq serve --port 8080 --token "$ADMIN_TOKEN"
    leanmq migrate --all --dry-run                 # LeanMQ 0.2 queues: then --confirm
    leanmq bridge                                  # while LeanMQ 0.2 producers still write

``--url`` defaults to ``$LEANMQ_URL`` (then redis://localhost:6379/0), ``--prefix`` to
``$LEANMQ_PREFIX`` (then ``mq:``). Tables for people by default, ``--json`` for scripts.
Exit codes: 0 success; 1 failure (Redis unreachable, queue or message not found);
2 usage error or a destructive command without ``--confirm``; ``health --once``: 0 ok,
1 warning, 2 critical.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Sequence

import anyio

from leanmq_async._version import __version__
from leanmq_async.client import LeanMQ
from leanmq_async.exceptions import (
    ConfigurationError,
    InvalidMessageIdError,
    LeanMQConnectionError,
    LeanMQError,
    QueueNotFoundError,
    WrongQueueKindError,
)
from leanmq_async.ops import dlq_tools
from leanmq_async.ops.cli import COMMAND_MODULES
from leanmq_async.ops.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CommandRun,
    Commands,
    UsageError,
    err,
    table,
)
from leanmq_async.ops.cli.stats import DEPTH_LEGEND as DEPTH_LEGEND
from leanmq_async.ops.health import EXIT_CODES
from leanmq_async.worker.cli_logging import configure_logging

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "PROG", "build_parser", "main", "table"]

_EPILOG = """\
exit codes: 0 success, 1 failure (Redis unreachable, queue or message not found),
2 usage error or destructive command without --confirm; health --once: 0 ok,
1 warning, 2 critical.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``leanmq``: the common options, then each command module's."""
    # Common options are accepted before or after the command (SUPPRESS: a value given
    # before is not reset by the subcommand's default).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="Redis URL ($LEANMQ_URL)")
    common.add_argument(
        "--prefix", default=argparse.SUPPRESS, help="key prefix ($LEANMQ_PREFIX, default mq:)"
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=argparse.SUPPRESS,
        help="show the library's log events at this level on stderr",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and operate leanmq_async queues.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands = Commands(sub, common)
    for module in COMMAND_MODULES:
        module.add_parser(commands)
    return parser


async def _run(args: argparse.Namespace) -> int:
    url = getattr(args, "url", None)
    prefix = getattr(args, "prefix", None)
    if prefix is None:
        prefix = os.environ.get("LEANMQ_PREFIX", "mq:")
    async with LeanMQ(url, prefix=prefix) as mq:
        run: CommandRun = args.run
        return await run(mq, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``leanmq`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.json = getattr(args, "json", False)
    if hasattr(args, "log_level"):  # otherwise logging stays as it is (WARNING+ to stderr)
        configure_logging(args.log_level, "console")
    try:
        return anyio.run(functools.partial(_run, args), backend="asyncio")
    except UsageError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    except dlq_tools.ConfirmationRequiredError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    except QueueNotFoundError as exc:
        err(f"error: {exc}")
        return EXIT_FAILURE
    except (ConfigurationError, InvalidMessageIdError, WrongQueueKindError) as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    except LeanMQConnectionError as exc:
        err(f"error: {exc}")
        if args.command == "health" and args.once:
            return EXIT_CODES["critical"]
        return EXIT_FAILURE
    except LeanMQError as exc:
        err(f"error: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
