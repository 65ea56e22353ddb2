"""``leanmq health``: check the queues against thresholds, once (cron) or continuously."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

import msgspec

from leanmq_async.ops.cli.common import (
    EXIT_OK,
    Commands,
    count_type,
    out,
    positive_int,
    positive_seconds,
    print_json,
    seconds_type,
)
from leanmq_async.ops.health import (
    AlertEvent,
    HealthReport,
    HealthThresholds,
    HealthWatcher,
    check_health,
)

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ


def health_text(report: HealthReport) -> str:
    lines = [f"status: {report.status}" + ("" if report.redis else " (Redis unreachable)")]
    lines.extend(f"  [{issue.level}] {issue.message}" for issue in report.issues)
    if not report.issues:
        lines.append(f"  {len(report.queues) - 1} queue(s) checked, no issue")
    return "\n".join(lines)


def thresholds_from(args: argparse.Namespace) -> HealthThresholds:
    names = [
        f"{check}_{level}{suffix}"
        for check, suffix in (
            ("backlog", ""),
            ("dlq", ""),
            ("pending", ""),
            ("oldest_pending", "_s"),
        )
        for level in ("warning", "critical")
    ]
    return HealthThresholds(**{n: getattr(args, n) for n in names})


async def _cmd_health(mq: LeanMQ, args: argparse.Namespace) -> int:
    thresholds = thresholds_from(args)
    if args.once:
        report = await check_health(mq, thresholds, queues=args.queue)
        if args.json:
            print_json(report)
        else:
            out(health_text(report))
        return report.exit_code

    def show(event: AlertEvent) -> None:
        if args.json:
            out(msgspec.json.encode(event).decode())
        else:
            stamp = time.strftime("%H:%M:%S")
            out(f"{stamp} {event.queue}: {event.previous} -> {event.current}")
            for issue in event.issues:
                out(f"  [{issue.level}] {issue.message}")
        sys.stdout.flush()

    watcher = HealthWatcher(
        mq, [show], interval=args.interval, thresholds=thresholds, queues=args.queue
    )
    await watcher.run(iterations=args.iterations)
    last = watcher.last_report
    return last.exit_code if last is not None else EXIT_OK


def add_parser(commands: Commands) -> None:
    """Add ``health`` to ``leanmq``."""
    p = commands.add("health", "check queues against thresholds (--once for cron)", _cmd_health)
    p.add_argument("--once", action="store_true", help="check once and exit 0/1/2")
    p.add_argument("--queue", action="append", metavar="NAME", help="only this queue (repeat)")
    p.add_argument(
        "--interval", type=positive_seconds, default=30.0, metavar="S", help="between checks"
    )
    p.add_argument("--iterations", type=positive_int, metavar="N", help="stop after N checks")
    defaults = HealthThresholds()
    what = {
        "backlog": ("N", "messages a group has not finished (waiting + pending)"),
        "dlq": ("N", "messages in the dead-letter queue"),
        "pending": ("N", "messages delivered and not acknowledged"),
        "oldest-pending": ("S", "age in seconds of the oldest pending message"),
    }
    for name, (metavar, text) in what.items():
        kind = seconds_type if metavar == "S" else count_type
        for level in ("warning", "critical"):
            attr = f"{name.replace('-', '_')}_{level}" + ("_s" if metavar == "S" else "")
            default = getattr(defaults, attr)
            many = "this many " if metavar == "N" else "this "
            shown = "off" if default is None else default
            p.add_argument(
                f"--{name}-{level}",
                dest=attr,
                type=kind,
                default=default,
                metavar=metavar,
                help=f"{level} above {many}{text} (default: {shown})",
            )
