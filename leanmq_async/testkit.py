"""Testing an app that uses leanmq_async: run its worker until idle, without real backoff.

Made for a test suite with a real (private) Redis underneath; see the pytest plugin
:mod:`leanmq_async.pytest_plugin` for the fixtures that start one::

    report = await run_until_idle(mq)
    assert report.handled == [order_id]
    assert report.dead_lettered == {}

:func:`run_until_idle` runs a burst worker for the client's handlers: it handles what is
waiting, every retry included (with :func:`instant_backoff`, so a handler that fails
twice costs no sleeping), then returns a :class:`WorkerReport` of what happened.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio

from leanmq_async.worker.observer import WorkerObserver

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.queue import Queue
    from leanmq_async.worker.runner import HandlerRunner

__all__ = ["WorkerReport", "instant_backoff", "no_backoff", "run_until_idle"]


def no_backoff(_retry: int) -> float:
    """A backoff of zero seconds: retries run at once."""
    return 0.0


@dataclass
class WorkerReport:
    """What a worker did, by producer message id (``Message.message_id``), in order.

    handled: ids whose handler returned (acknowledged).
    retried: one entry per retry scheduled (an id failing twice appears twice).
    dead_lettered: id -> the reason it was moved to the dead-letter queue.
    errors: id -> the exceptions its handler raised, in order.
    expired: ids whose TTL ran out before they were handled.
    """

    handled: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    dead_lettered: dict[str, str] = field(default_factory=dict)
    errors: dict[str, list[BaseException]] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"WorkerReport(handled={len(self.handled)}, retried={len(self.retried)}, "
            f"dead_lettered={len(self.dead_lettered)}, expired={len(self.expired)})"
        )


class _Recorder(WorkerObserver):
    def __init__(self, report: WorkerReport) -> None:
        self.report = report

    def on_handled(self, runner: HandlerRunner, message_id: str, duration: float) -> None:
        self.report.handled.append(message_id)

    def on_failed(
        self, runner: HandlerRunner, message_id: str, error: BaseException, duration: float
    ) -> None:
        self.report.errors.setdefault(message_id, []).append(error)

    def on_retried(
        self, runner: HandlerRunner, message_id: str, attempt: int, delay: float
    ) -> None:
        self.report.retried.append(message_id)

    def on_dead_lettered(
        self, runner: HandlerRunner, message_id: str, reason: str, error_type: str
    ) -> None:
        self.report.dead_lettered[message_id] = reason

    def on_expired(self, runner: HandlerRunner, message_id: str) -> None:
        self.report.expired.append(message_id)


@contextmanager
def instant_backoff(mq: LeanMQ) -> Iterator[None]:
    """Within the block, every handler of ``mq`` retries at once (its backoff is zero).

    A handler's own ``Retry(delay=...)`` is still honoured.
    """
    saved = [(h, h.options) for h in mq.handlers]
    for handler, options in saved:
        handler.options = replace(options, backoff=no_backoff)
    try:
        yield
    finally:
        for handler, options in saved:
            handler.options = options


async def run_until_idle(
    mq: LeanMQ,
    *,
    queues: Iterable[Queue[Any]] | None = None,
    max_seconds: float = 30.0,
    backoff: bool = False,
    **settings: Any,
) -> WorkerReport:
    """Run a burst worker for ``mq``'s handlers until nothing is left; report what it did.

    Creates its queues and groups, handles what is waiting and every retry, then stops.
    Retries run at once unless ``backoff=True`` (the handlers' real backoff). ``queues``:
    XX. Other
    keywords are :class:`~leanmq_async.worker.WorkerSettings` (``observers`` are kept).
    """
    report = WorkerReport()
    settings.setdefault("block_ms", 100)
    settings.setdefault("maintenance_interval", 0.02)
    settings["observers"] = (*settings.get("observers", ()), _Recorder(report))
    if queues is not None:
        settings["queues"] = queues
    with anyio.fail_after(max_seconds):
        if backoff:
            await mq.run_worker(burst=True, **settings)
        else:
            with instant_backoff(mq):
                await mq.run_worker(burst=True, **settings)
    return report
