"""``leanmq bridge``: keep moving LeanMQ 0.2 queues while 0.2 producers still write.

For a rolling cut-over: LeanMQ 0.2 producers (``Queue.send_message``,
``LeanMQWebhook.send``) keep writing the old streams while leanmq_async workers read
the new ones. The bridge repeats :func:`~leanmq_async.ops.migrate.migrate_queue` every
``interval`` seconds, for the queues named or every LeanMQ 0.2 queue under the prefix
(found again each round, so a queue a webhook creates later is bridged too). Each move
is the migration's atomic step: the bridge can be stopped or killed (-9) at any point
and started again, and run as several copies, without loss or duplication.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from leanmq_async.exceptions import ConfigurationError, LeanMQConnectionError
from leanmq_async.legacy import find_legacy_queues
from leanmq_async.ops.migrate import DEFAULT_BATCH, MigrationReport, migrate_queue

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = ["BridgeTotals", "run_bridge"]


class BridgeTotals:
    """Running totals of a bridge: messages moved per queue, and rounds run."""

    def __init__(self) -> None:
        self.moved: dict[str, int] = {}
        self.rounds = 0

    def add(self, report: MigrationReport) -> int:
        n = report.waiting + report.pending + report.dead
        self.moved[report.queue] = self.moved.get(report.queue, 0) + n
        return n

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "moved": dict(self.moved)}


async def run_bridge(
    mq: LeanMQ,
    queues: Sequence[str] | None = None,
    *,
    interval: float = 0.5,
    batch: int = DEFAULT_BATCH,
    min_idle: float = 60.0,
    iterations: int | None = None,
    stop: anyio.Event | None = None,
    log: Any = None,
) -> BridgeTotals:
    """Move LeanMQ 0.2 messages into leanmq_async until ``stop`` is set (or ``iterations``).

    Pending entries are moved once idle ``min_idle`` seconds (a LeanMQ 0.2 consumer
    still running keeps the ones it is working on); waiting entries a 0.2 consumer takes
    meanwhile stay with it. A round that finds Redis unreachable is logged and retried
    after ``interval``.
    """
    if not interval >= 0:
        raise ConfigurationError(f"interval must be >= 0 seconds, got {interval!r}")
    log = log if log is not None else mq.log
    totals = BridgeTotals()
    wanted = set(queues) if queues else None
    while stop is None or not stop.is_set():
        if iterations is not None and totals.rounds >= iterations:
            break
        totals.rounds += 1
        try:
            for legacy in await find_legacy_queues(mq):
                if (wanted is not None and legacy.name not in wanted) or not legacy.migratable:
                    continue
                if not legacy.total:
                    continue
                n = totals.add(await migrate_queue(mq, legacy, batch=batch, min_idle=min_idle))
                if n:
                    log.info("bridge_moved", queue=legacy.name, moved=n)
        except LeanMQConnectionError as exc:
            log.warning("bridge_redis_unavailable", error=str(exc))
        if stop is None:
            await anyio.sleep(interval)
        else:
            with anyio.move_on_after(interval):
                await stop.wait()
    return totals
