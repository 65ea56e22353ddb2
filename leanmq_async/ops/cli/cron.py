"""``leanmq cron``: the periodic jobs, their schedule, next and last run, last result."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from leanmq_async.ops.cli.common import EXIT_OK, Commands, num, out, print_json, short, table, when
from leanmq_async.ops.cron_list import CronStats, collect_cron

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ


def _result(job: CronStats) -> str:
    if job.outcome is None:
        return "-"
    text = job.outcome
    if job.duration_s is not None:
        text += f" in {job.duration_s:g}s"
    if job.error:
        text += f": {short(job.error, 60)}"
    return text


def _next(job: CronStats, now: float) -> str:
    if job.next_tick is None:
        return "-"
    # Not scheduled a while after it was due: no worker serves the job now.
    late = " (overdue: no worker?)" if job.next_tick < now - 60 else ""
    return when(job.next_tick) + late


def cron_text(jobs: Sequence[CronStats], now: float | None = None) -> str:
    """The jobs as a table (``leanmq cron``, and under ``leanmq stats``)."""
    now = time.time() if now is None else now
    rows = [
        [
            j.name,
            j.schedule,
            _next(j, now),
            when(j.last_tick) + (" (skipped)" if j.last_status == "skipped" else ""),
            _result(j),
            num(j.runs),
            num(j.failed),
        ]
        for j in jobs
    ]
    headers = ["JOB", "SCHEDULE", "NEXT RUN", "LAST RUN", "LAST RESULT", "RUNS", "FAILED"]
    return table(headers, rows)


async def _cmd_cron(mq: LeanMQ, args: argparse.Namespace) -> int:
    jobs = await collect_cron(mq)
    if args.json:
        print_json(jobs)
    elif not jobs:
        out(f"no periodic jobs under prefix {mq.prefix!r}")
    else:
        out(cron_text(jobs))
    return EXIT_OK


def add_parser(commands: Commands) -> None:
    """Add ``cron`` to ``leanmq``."""
    commands.add(
        "cron",
        "the periodic jobs: schedule, next run, last run and its result, runs and failures",
        _cmd_cron,
    )
