"""``leanmq stats``: depth, backlog, pending, lag, DLQ, delayed and consumers per queue."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import anyio

from leanmq_async.legacy import legacy_notice
from leanmq_async.ops.cli.common import (
    EXIT_OK,
    Commands,
    age,
    num,
    out,
    print_json,
    seconds_type,
    table,
)
from leanmq_async.ops.cli.cron import cron_text
from leanmq_async.ops.stats import Stats, collect_stats
from leanmq_async.ops.stats_sampler import StatsSampler

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ


DEPTH_LEGEND = (
    "DEPTH counts every entry kept in the stream, acknowledged history included (the worker "
    "trims it after its retention);\nBACKLOG = LAG + PENDING is the work still to do."
)


def stats_text(stats: Stats) -> str:
    rows = []
    for q in stats.queues:
        rate = None if q.error_rate is None else q.error_rate * 100
        rows.append(
            [
                q.name if q.exists else f"{q.name} (deleted)",
                num(q.length),
                num(q.backlog),
                num(q.pending),
                num(q.lag),
                age(q.oldest_pending_age_s),
                num(q.dlq_length),
                num(q.delayed),
                num(q.consumers),
                num(q.enqueued_per_s, 1),
                num(q.processed_per_s, 1),
                "-" if rate is None else f"{rate:.1f}%",
            ]
        )
    legacy = [q for q in stats.legacy if q.total]  # LeanMQ 0.2 queues (issue 15)
    if not rows and not legacy:
        return f"no queues under prefix {stats.prefix!r}"
    parts = [
        table(
            [
                "QUEUE", "DEPTH", "BACKLOG", "PENDING", "LAG", "OLDEST", "DLQ", "DELAYED",
                "CONSUMERS", "IN/S", "DONE/S", "ERRORS",
            ],
            rows,
        )
    ]  # fmt: skip
    group_rows = []
    for q in stats.queues:
        for g in q.groups:
            consumers = ", ".join(
                f"{c.name} ({c.pending} pending, idle {age(c.idle_s)})" for c in g.consumers
            )
            lag = num(g.lag) + ("" if g.lag_exact else "+")
            group_rows.append(
                [
                    q.name,
                    g.name,
                    num(g.pending),
                    lag,
                    age(g.oldest_pending_idle_s),
                    consumers or "-",
                ]
            )
    if group_rows:
        parts.append("")
        parts.append(
            table(["QUEUE", "GROUP", "PENDING", "LAG", "OLDEST-IDLE", "CONSUMERS"], group_rows)
        )
    if stats.cron:  # periodic jobs (issue 16)
        parts += ["", cron_text(stats.cron, stats.collected_at)]
    parts.append(f"\n{DEPTH_LEGEND}")
    if stats.window_s:
        parts.append(f"rates over {stats.window_s:.1f}s")
    parts.extend(f"error in {q.name}: {q.error}" for q in stats.queues if q.error)
    if legacy:
        parts.append(f"\n{legacy_notice(legacy)}")
    return "\n".join(parts)


async def _cmd_stats(mq: LeanMQ, args: argparse.Namespace) -> int:
    if args.interval:
        sampler = StatsSampler(mq, window=args.interval * 2 + 1, queues=args.queue)
        await sampler.collect()
        await anyio.sleep(args.interval)
        stats = await sampler.collect()
    else:
        stats = await collect_stats(mq, args.queue)
    if args.json:
        print_json(stats)
    else:
        out(stats_text(stats))
    return EXIT_OK


def add_parser(commands: Commands) -> None:
    """Add ``stats`` to ``leanmq``."""
    p = commands.add(
        "stats",
        "depth (acknowledged history included), backlog, pending, lag, DLQ, delayed and "
        "consumers of every queue",
        _cmd_stats,
    )
    p.add_argument("--queue", action="append", metavar="NAME", help="only this queue (repeat)")
    p.add_argument(
        "--interval",
        type=seconds_type,
        default=0.0,
        metavar="S",
        help="take two samples S seconds apart to show rates (default: 0, no rates)",
    )
