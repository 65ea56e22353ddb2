"""Periodic jobs as listed by ``leanmq cron``, ``collect_stats`` and the admin API.

A job's state hash (``{prefix}{cron.<job>}:cron``, see :mod:`leanmq_async.cron`) holds
its schedule (written by every worker that starts), its last and next tick (written by
the tick script) and its last run's outcome (written by the run). Reading every job costs
one pipeline of HGETALLs, one round trip; the job names come from the queue registry
(the queues ``cron.<job>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from leanmq_async.cron import CRON_QUEUE_PREFIX
from leanmq_async.keys import QueueKeys

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = ["CronStats", "collect_cron", "cron_queue_names"]


class CronStats(msgspec.Struct, kw_only=True):
    """One periodic job: its schedule, its ticks and its last run's outcome.

    Times are unix seconds (``*_tick``: the scheduled instant; the others: when it happened).
    """

    name: str
    queue: str
    schedule: str
    """``"*/5 * * * * (Europe/Berlin)"`` or ``"every 30s"``."""
    missed: str = "run_once"
    jitter_s: float = 0.0
    last_tick: float | None = None
    """The last tick scheduled (run or skipped)."""
    next_tick: float | None = None
    """The tick after it, as the worker that scheduled the last one computed it."""
    last_status: str | None = None
    """What happened to the last tick: ``"enqueued"`` or ``"skipped"``."""
    runs: int = 0
    """Runs enqueued (one per tick run)."""
    skipped: int = 0
    outcome: str | None = None
    """The last finished attempt: ``"ok"``, ``"retrying"`` (failed, will retry) or
    ``"failed"`` (dead-lettered)."""
    outcome_at: float | None = None
    outcome_tick: float | None = None
    duration_s: float | None = None
    error: str = ""
    succeeded: int = 0
    retried: int = 0
    failed: int = 0


def cron_queue_names(queue_names: Sequence[str]) -> list[str]:
    """The queues among ``queue_names`` that carry a periodic job's runs."""
    return [n for n in queue_names if n.startswith(CRON_QUEUE_PREFIX)]


def _seconds(value: str | None, scale: float = 1000.0) -> float | None:
    try:
        return None if value in (None, "", "-1") else round(float(value) / scale, 3)
    except ValueError:
        return None


def _count(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


async def collect_cron(mq: LeanMQ, queue_names: Sequence[str] | None = None) -> list[CronStats]:
    """Every periodic job under ``mq.prefix`` (or among ``queue_names``), by name.

    One round trip for the registry (skipped with ``queue_names``), one for the states.
    """
    if queue_names is None:
        queue_names = await mq.store.registered_queues(mq.prefix)
    names = sorted(cron_queue_names(queue_names))
    states = await mq.store.cron_states([QueueKeys(mq.prefix, n) for n in names])
    jobs = []
    for queue, s in zip(names, states, strict=True):
        if "schedule" not in s:
            continue  # a queue named cron.* that no job ever used
        jobs.append(
            CronStats(
                name=s.get("job") or queue.removeprefix(CRON_QUEUE_PREFIX),
                queue=queue,
                schedule=s["schedule"],
                missed=s.get("missed", "run_once"),
                jitter_s=_seconds(s.get("jitter_ms")) or 0.0,
                last_tick=_seconds(s.get("last")),
                next_tick=_seconds(s.get("next")),
                last_status=s.get("status"),
                runs=_count(s.get("runs")),
                skipped=_count(s.get("skipped")),
                outcome=s.get("outcome"),
                outcome_at=_seconds(s.get("outcome_at"), 1.0),
                outcome_tick=_seconds(s.get("outcome_tick")),
                duration_s=_seconds(s.get("duration"), 1.0),
                error=s.get("error", ""),
                succeeded=_count(s.get("succeeded")),
                retried=_count(s.get("retried")),
                failed=_count(s.get("failed")),
            )
        )
    return jobs
