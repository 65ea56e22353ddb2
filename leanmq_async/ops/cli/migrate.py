"""``leanmq migrate`` and ``leanmq bridge``: move LeanMQ 0.2 queues into leanmq_async.

leanmq migrate --all --dry-run        # what would move, per LeanMQ 0.2 queue
leanmq migrate orders --confirm       # move one queue (re-run after any interruption)
leanmq migrate --all --confirm        # every queue, and the old registry entries
leanmq bridge --interval 0.5          # keep moving while LeanMQ 0.2 producers write
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

import anyio

from leanmq_async.exceptions import ConfigurationError
from leanmq_async.legacy import find_legacy_queues
from leanmq_async.ops.bridge import run_bridge
from leanmq_async.ops.cli.common import Commands, positive_int, seconds_type
from leanmq_async.ops.migrate import DEFAULT_BATCH, migrate, migrate_registry

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = ["add_parser", "cmd_bridge", "cmd_migrate"]


def add_parser(commands: Commands) -> None:
    """Add ``migrate`` and ``bridge`` to ``leanmq``."""
    p = commands.add(
        "migrate",
        "move LeanMQ 0.2 queues (waiting, pending and DLQ) into leanmq_async; safe to re-run",
        cmd_migrate,
    )
    p.add_argument("queue", nargs="?", metavar="QUEUE", help="the LeanMQ 0.2 queue (orders)")
    p.add_argument("--all", action="store_true", help="every LeanMQ 0.2 queue under the prefix")
    p.add_argument("--dry-run", action="store_true", help="show what would move; change nothing")
    p.add_argument("--confirm", action="store_true", help="move (required unless --dry-run)")
    p.add_argument(
        "--batch", type=positive_int, default=DEFAULT_BATCH, metavar="N",
        help=f"entries per atomic step (default {DEFAULT_BATCH})",
    )  # fmt: skip

    p = commands.add(
        "bridge",
        "keep moving LeanMQ 0.2 queues into leanmq_async during a rolling cut-over",
        cmd_bridge,
    )
    p.add_argument("queue", nargs="*", metavar="QUEUE", help="only these (default: every one)")
    p.add_argument("--interval", type=seconds_type, default=0.5, metavar="S", help="between rounds")
    p.add_argument(
        "--min-idle", type=seconds_type, default=60.0, metavar="S",
        help="move a pending (delivered, unacked) 0.2 message once idle S seconds (default 60)",
    )  # fmt: skip
    p.add_argument("--iterations", type=positive_int, metavar="N", help="stop after N rounds")
    p.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH, metavar="N")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def cmd_migrate(mq: LeanMQ, args: argparse.Namespace) -> int:
    """``leanmq migrate``: exit 0 done (or dry run), 2 usage, 1 failure."""
    if bool(args.queue) == bool(args.all):
        raise ConfigurationError("name one LeanMQ 0.2 queue, or pass --all")
    if args.dry_run == args.confirm:
        raise ConfigurationError("pass --dry-run to see what would move, or --confirm to move it")
    names = None if args.all else [args.queue]
    reports = await migrate(mq, names, dry_run=args.dry_run, batch=args.batch)
    registry = await migrate_registry(mq, dry_run=args.dry_run) if args.all else 0
    if args.json:
        _out(json.dumps({"queues": [r.to_dict() for r in reports], "registry_entries": registry}))
        return 0
    verb = "would move" if args.dry_run else "moved"
    if not reports:
        _out(f"no LeanMQ 0.2 queues under prefix {mq.prefix!r}")
    for r in reports:
        extra = f" ({r.skipped} taken by a LeanMQ 0.2 consumer meanwhile)" if r.skipped else ""
        _out(
            f"{r.queue}: {verb} {r.waiting} waiting, {r.pending} pending (delivered again), "
            f"{r.dead} dead letters{extra}"
        )
    if registry:
        _out(f"registry: {verb} {registry} entries from the old key {mq.prefix}registry")
    if args.dry_run:
        _out("dry run: nothing changed; run again with --confirm")
    return 0


async def cmd_bridge(mq: LeanMQ, args: argparse.Namespace) -> int:
    """``leanmq bridge``: runs until SIGINT/SIGTERM (or ``--iterations``); exit 0."""
    if not await find_legacy_queues(mq):
        mq.log.warning("bridge_no_legacy_queues", prefix=mq.prefix)
    stop = anyio.Event()
    totals: Any = None
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stop.set()
                    return

        tg.start_soon(on_signal)
        _out(f"bridging LeanMQ 0.2 queues under {mq.prefix!r} (Ctrl-C to stop)")
        totals = await run_bridge(
            mq,
            args.queue or None,
            interval=args.interval,
            batch=args.batch,
            min_idle=args.min_idle,
            iterations=args.iterations,
            stop=stop,
        )
        tg.cancel_scope.cancel()
    if args.json:
        _out(json.dumps(totals.to_dict()))
    else:
        moved = ", ".join(f"{k}: {v}" for k, v in sorted(totals.moved.items())) or "nothing"
        _out(f"bridge stopped after {totals.rounds} rounds; moved {moved}")
    return 0
