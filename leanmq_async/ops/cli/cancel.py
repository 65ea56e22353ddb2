"""``leanmq cancel``: cancel one message by id (``Queue.cancel``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from leanmq_async.ops import dlq_tools
from leanmq_async.ops.cli.common import EXIT_FAILURE, EXIT_OK, Commands, out, print_json

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

_SAY = {
    "cancelled": "cancelled before it started: it will not run (dead-lettered, reason cancelled)",
    "running": "cancel requested: its worker cancels the running handler (then dead-letters it)",
    "finished": "already finished: nothing to cancel",
    "not_found": "not found (never sent, already gone, or a delayed message already due)",
}


async def _cmd_cancel(mq: LeanMQ, args: argparse.Namespace) -> int:
    report = await dlq_tools.cancel_message(mq, args.queue, args.id)
    if args.json:
        print_json(report)
    else:
        out(f"{report.queue} {report.id}: {_SAY[report.outcome]}")
    return EXIT_FAILURE if report.outcome == "not_found" else EXIT_OK


def add_parser(commands: Commands) -> None:
    """Add ``cancel`` to ``leanmq``."""
    p = commands.add("cancel", "cancel a message by id (delayed, waiting or running)", _cmd_cancel)
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument(
        "id", metavar="ID", help="the id its send returned (or an idempotent send's message_id)"
    )
