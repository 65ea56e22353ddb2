"""``leanmq dlq``: list, show, requeue and purge the dead letters of a queue."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import msgspec

from leanmq_async.ops import dlq_tools
from leanmq_async.ops.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Commands,
    UsageError,
    err,
    out,
    positive_int,
    print_json,
    short,
    table,
    when,
)

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.message import Message


def message_row(m: Message[Any]) -> list[str]:
    info = m.dead_letter
    reason = ""
    if info is not None:
        reason = (f"{info.error_type}: " if info.error_type else "") + info.reason
    return [
        m.id,
        when(info.failed_at if info else None),
        short(reason, 50),
        str(info.attempts if info else 0),
        short(json.dumps(msgspec.to_builtins(m.data), default=str), 60),
    ]


async def _cmd_dlq(mq: LeanMQ, args: argparse.Namespace) -> int:
    action = args.dlq_command
    if action == "list":
        messages = await dlq_tools.list_dead_letters(mq, args.queue, args.count, args.start)
        if args.json:
            print_json(messages)
        elif not messages:
            out(f"the dead-letter queue of {args.queue!r} is empty")
        else:
            rows = [message_row(m) for m in messages]
            out(table(["ID", "FAILED", "REASON", "ATTEMPTS", "DATA"], rows))
        return EXIT_OK
    if action == "show":
        message = await dlq_tools.get_dead_letter(mq, args.queue, args.id)
        if message is None:
            err(f"no message {args.id} in the dead-letter queue of {args.queue!r}")
            return EXIT_FAILURE
        if args.json:
            print_json(message)
            return EXIT_OK
        info = message.dead_letter
        fields = [
            ("id", message.id),
            ("message id", message.message_id),
            ("enqueued", when(message.timestamp)),
        ]
        if info is not None:
            fields += [
                ("failed", when(info.failed_at)),
                ("reason", info.reason),
                ("error", info.error_type or "-"),
                ("attempts", str(info.attempts)),
                ("from", f"{info.source_queue} {info.source_id} (group {info.group or '-'})"),
            ]
        fields.append(("headers", json.dumps(message.headers)))
        for name, value in fields:
            out(f"{name + ':':<12} {value}")
        out("data:")
        out(json.dumps(msgspec.to_builtins(message.data), indent=2, default=str))
        if info is not None and info.traceback:
            out("traceback:")
            out(info.traceback.rstrip())
        return EXIT_OK
    if action == "requeue":
        if args.all == bool(args.ids):
            raise UsageError("dlq requeue: give message ids, or --all (not both)")
        report = await dlq_tools.requeue_dead_letters(
            mq, args.queue, args.ids or None, all_messages=args.all, dry_run=args.dry_run
        )
        if args.json:
            print_json(report)
        else:
            verb = "would requeue" if report.dry_run else "requeued"
            out(f"{verb} {report.count} message(s) to {report.queue!r}")
            for sid in report.requeued:
                out(f"  {sid}")
            for skipped in report.skipped:
                out(f"  skipped {skipped.id}: {skipped.reason}")
        return EXIT_OK
    # purge
    if not args.confirm:
        raise UsageError(f"dlq purge deletes every dead letter of {args.queue!r}: add --confirm")
    purged = await dlq_tools.purge_dead_letters(mq, args.queue, confirm=True)
    if args.json:
        print_json(purged)
    else:
        out(f"purged {purged.purged} dead letter(s) of {purged.queue!r}")
    return EXIT_OK


def add_parser(commands: Commands) -> None:
    """Add ``dlq`` and its actions to ``leanmq``."""
    dlq = commands.add("dlq", "inspect and operate a dead-letter queue", _cmd_dlq)
    dsub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    def dlq_command(name: str, text: str) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = dsub.add_parser(
            name, help=text, description=text, parents=[commands.common]
        )
        q.add_argument("queue", metavar="QUEUE")
        return q

    p = dlq_command("list", "list dead letters (oldest first) without consuming them")
    p.add_argument("--count", type=positive_int, default=50, metavar="N")
    p.add_argument("--start", default="-", metavar="ID", help="first stream id to show")
    p = dlq_command("show", "show one dead letter with its failure details")
    p.add_argument("id", metavar="ID")
    p = dlq_command("requeue", "move dead letters back to their queue")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every message in the DLQ")
    p.add_argument("--dry-run", action="store_true", help="only report what would move")
    p = dlq_command("purge", "delete every message of the DLQ")
    p.add_argument("--confirm", action="store_true", help="required: this deletes messages")
