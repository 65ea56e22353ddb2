"""``leanmq watch``: a live view of the queues, refreshed every few seconds."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

import anyio
import msgspec

from leanmq_async.ops.cli.common import (
    EXIT_OK,
    PROG,
    Commands,
    out,
    positive_int,
    seconds_type,
)
from leanmq_async.ops.cli.stats import stats_text
from leanmq_async.ops.stats_sampler import StatsSampler

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ


async def _cmd_watch(mq: LeanMQ, args: argparse.Namespace) -> int:
    sampler = StatsSampler(mq, window=max(10.0, args.interval * 5), queues=args.queue)
    tty = sys.stdout.isatty()
    done = 0
    while args.iterations is None or done < args.iterations:
        stats = await sampler.collect()
        if args.json:
            out(msgspec.json.encode(stats).decode())
        else:
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            stamp = time.strftime("%H:%M:%S", time.localtime(stats.collected_at))
            out(f"{PROG} watch  prefix {mq.prefix!r}  {stamp}  (every {args.interval:g}s)")
            out()
            out(stats_text(stats))
            out()
        sys.stdout.flush()
        done += 1
        if args.iterations is not None and done >= args.iterations:
            break
        await anyio.sleep(args.interval)
    return EXIT_OK


def add_parser(commands: Commands) -> None:
    """Add ``watch`` to ``leanmq``."""
    p = commands.add(
        "watch", "live view of the queues, refreshed every --interval seconds", _cmd_watch
    )
    p.add_argument("--interval", type=seconds_type, default=2.0, metavar="S")
    p.add_argument("--iterations", type=positive_int, metavar="N", help="stop after N views")
    p.add_argument("--queue", action="append", metavar="NAME", help="only this queue (repeat)")
