"""``leanmq clear``, ``cleanup`` and ``force-process``: delete, trim and re-deliver."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from leanmq_async.ops import dlq_tools
from leanmq_async.ops.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Commands,
    UsageError,
    age,
    out,
    positive_int,
    print_json,
    seconds_type,
    table,
)

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ


async def _cmd_clear(mq: LeanMQ, args: argparse.Namespace) -> int:
    if not args.confirm:
        what = " and its dead-letter queue" if args.include_dlq else ""
        raise UsageError(f"clear deletes every message of {args.queue!r}{what}: add --confirm")
    report = await dlq_tools.clear_queue(mq, args.queue, include_dlq=args.include_dlq, confirm=True)
    if args.json:
        print_json(report)
    else:
        text = f"cleared {report.queue!r}: {report.messages} message(s), {report.delayed} delayed"
        if report.dead_letters is not None:
            text += f", {report.dead_letters} dead letter(s)"
        out(text)
    return EXIT_OK


async def _cmd_cleanup(mq: LeanMQ, args: argparse.Namespace) -> int:
    report = await dlq_tools.cleanup(mq, args.max_age_hours, queues=args.queue)
    if args.json:
        print_json(report)
    else:
        out(
            f"trimmed {report.total} acknowledged entr{'y' if report.total == 1 else 'ies'} "
            f"older than {args.max_age_hours:g}h"
        )
        for name, n in report.trimmed.items():
            out(f"  {name}: {n}")
        for name, error in report.errors.items():
            out(f"  {name}: error: {error}")
    return EXIT_FAILURE if report.errors else EXIT_OK


async def _cmd_force_process(mq: LeanMQ, args: argparse.Namespace) -> int:
    report = await dlq_tools.force_process(
        mq,
        args.queue,
        args.batch_size,
        min_idle=args.min_idle,
        group=args.group,
        dry_run=args.dry_run,
    )
    if args.json:
        print_json(report)
        return EXIT_OK
    if report.dry_run:
        out(
            f"{len(report.candidates)} message(s) of {report.queue!r} (group {report.group}) "
            f"stuck pending for {report.min_idle_s:g}s or more"
        )
    else:
        out(
            f"re-delivered {len(report.redelivered)} of {len(report.candidates)} stuck "
            f"message(s) of {report.queue!r} (group {report.group})"
        )
    if report.candidates:
        rows = [[c.id, c.consumer, age(c.idle_s), str(c.deliveries)] for c in report.candidates]
        out(table(["ID", "CONSUMER", "IDLE", "DELIVERIES"], rows))
    for skipped in report.skipped:
        out(f"  skipped {skipped.id}: {skipped.reason}")
    return EXIT_OK


def add_parser(commands: Commands) -> None:
    """Add ``clear``, ``cleanup`` and ``force-process`` to ``leanmq``."""
    p = commands.add(
        "clear", "delete every message of a queue (and with --include-dlq its DLQ)", _cmd_clear
    )
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument("--include-dlq", action="store_true")
    p.add_argument("--confirm", action="store_true", help="required: this deletes messages")

    p = commands.add(
        "cleanup", "trim acknowledged history older than N hours (never unacked)", _cmd_cleanup
    )
    p.add_argument("--max-age-hours", type=seconds_type, required=True, metavar="N")
    p.add_argument("--queue", action="append", metavar="NAME", help="only this queue (repeat)")

    p = commands.add(
        "force-process",
        "re-deliver messages stuck pending (dead consumers) now",
        _cmd_force_process,
    )
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument("--batch-size", type=positive_int, default=100, metavar="N")
    p.add_argument(
        "--min-idle",
        type=seconds_type,
        default=60.0,
        metavar="S",
        help="only messages idle this long (default: 60, above a worker's 30 s lease)",
    )
    p.add_argument("--group", help="consumer group (default: the queue's)")
    p.add_argument("--dry-run", action="store_true", help="only list the stuck messages")
