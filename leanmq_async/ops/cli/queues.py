"""``leanmq queues``: list the queues and their dead-letter queues."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from leanmq_async.ops.cli.common import (
    EXIT_OK,
    Commands,
    num,
    out,
    print_json,
    table,
    when,
)

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ


async def _cmd_queues(mq: LeanMQ, args: argparse.Namespace) -> int:
    infos = await mq.list_queues()
    if args.json:
        print_json(infos)
        return EXIT_OK
    if not infos:
        out(f"no queues under prefix {mq.prefix!r}")
        return EXIT_OK
    rows = [
        [
            i.name,
            "dlq" if i.is_dlq else "queue",
            num(i.message_count),
            num(i.pending_messages),
            num(i.delayed_messages) if not i.is_dlq else "-",
            ",".join(i.consumer_groups) or "-",
            when(i.created_at),
        ]
        for i in infos
    ]
    out(table(["NAME", "KIND", "MESSAGES", "PENDING", "DELAYED", "GROUPS", "CREATED"], rows))
    return EXIT_OK


def add_parser(commands: Commands) -> None:
    """Add ``queues`` to ``leanmq``."""
    commands.add("queues", "list the queues and their dead-letter queues", _cmd_queues)
