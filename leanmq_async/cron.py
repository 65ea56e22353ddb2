"""Periodic jobs: ``@mq.cron("*/5 * * * *")`` and ``@mq.cron(every=30)``, run by the workers.

A job is an ``async def`` function taking nothing or one :class:`CronRun`. Every worker
that serves it (``mq.worker()``, ``run_worker``, ``leanmq-worker app:mq``: no extra
process) schedules it, and **exactly one run per tick** is enqueued across any number of
worker processes: the tick script (``lua/cron_tick.lua``) compares and sets the job's last
tick and writes the run message in one atomic step, on the Redis clock.

A run is an ordinary message on the queue ``cron.<name>``, handled by an ordinary
handler: retries with backoff, ``timeout``, the DLQ, metrics and stats apply, and a run
is delivered at least once (a worker dying mid-run has it run again). Options:

* ``tz``: the time zone of a cron expression (default ``"UTC"``);
* ``name``: the job's name (default: the function's ``__name__``); its queue is ``cron.<name>``;
* ``missed``: ticks missed while no worker ran are run **once** at the next start
  (``"run_once"``, the default: the latest missed tick runs, never one per missed tick),
  or not at all (``"skip"``: a tick later than half the interval, at least 1 s and at
  most 60 s, is recorded as skipped);
* ``jitter``: seconds; each run is delayed by a random 0..jitter (a tick still runs once);
* ``concurrency`` (default 1), ``max_retries``, ``backoff``, ``timeout``,
  ``visibility_timeout``, ``max_deliveries``: as for ``@queue.handler``.

The job's state (its schedule, last and next tick, last outcome, counters) lives in the
hash ``{prefix}{cron.<name>}:cron``; ``leanmq cron``, ``collect_stats`` and the admin
API list it.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

import anyio

from leanmq_async._log import get_logger
from leanmq_async.backoff import Backoff
from leanmq_async.cron_schedule import Schedule, parse_schedule
from leanmq_async.exceptions import ConfigurationError, LeanMQError, Reject
from leanmq_async.keys import validate_queue_name
from leanmq_async.message import Message
from leanmq_async.registration import HandlerOptions, register_handler

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.queue import Queue
    from leanmq_async.registration import Handler

__all__ = ["CRON_QUEUE_PREFIX", "CronJob", "CronKwargs", "CronRun", "MissedPolicy", "cron"]

CRON_QUEUE_PREFIX = "cron."
"""A job named ``report`` runs on the queue ``cron.report``."""

MissedPolicy = Literal["run_once", "skip"]
JobFunc = TypeVar("JobFunc", bound=Callable[..., Awaitable[Any]])

_HANDLER_OPTIONS = (
    "concurrency",
    "max_retries",
    "backoff",
    "timeout",
    "visibility_timeout",
    "max_deliveries",
)
_OWN_OPTIONS = ("every", "tz", "name", "missed", "jitter")


class CronKwargs(TypedDict, total=False):
    """The keywords of ``@mq.cron(...)`` (see :mod:`leanmq_async.cron`)."""

    every: float | timedelta
    tz: str
    name: str
    missed: MissedPolicy
    jitter: float
    concurrency: int
    max_retries: int | None
    backoff: Backoff
    timeout: float | None
    visibility_timeout: float
    max_deliveries: int


@dataclass(frozen=True, slots=True)
class CronRun:
    """What a job taking one argument receives: which tick this run is for."""

    job: str
    scheduled_at: datetime
    """The tick, an aware datetime in the job's time zone."""
    tick_ms: int
    """The tick in ms since the epoch (also in the run's message id, ``<job>:<tick_ms>``)."""
    message_id: str
    attempt: int
    """1 for the first attempt, 2 for the first retry, ..."""


@dataclass(eq=False)
class CronJob:
    """A registered periodic job: its schedule, policies, queue and handler."""

    name: str
    schedule: Schedule
    missed: MissedPolicy
    jitter_ms: int
    queue: Queue
    func: Callable[..., Awaitable[Any]]
    takes_run: bool
    timeout: float | None
    handler: Handler | None = field(default=None, repr=False)

    @property
    def late_ms(self) -> int:
        """With ``missed="skip"``: a tick later than this is skipped (0: none is)."""
        if self.missed != "skip":
            return 0
        return max(1000, min(self.schedule.interval_ms() // 2, 60_000))

    def description(self) -> dict[str, str | int]:
        """The fields every starting worker writes to the job's state hash (listings)."""
        return {
            "job": self.name,
            "schedule": self.schedule.describe(),
            "expression": self.schedule.expression or "",
            "every_ms": self.schedule.every_ms or 0,
            "tz": self.schedule.tz,
            "missed": self.missed,
            "jitter_ms": self.jitter_ms,
        }

    async def run(self, message: Message[Any]) -> None:
        """Run the job for the tick in ``message``, recording the outcome in its state."""
        data = message.data if isinstance(message.data, Mapping) else {}
        tick = int(data.get("tick", 0))
        info = CronRun(self.name, self.schedule.at(tick), tick, message.message_id, message.attempt)
        started = time.monotonic()
        timeout = self.timeout
        try:
            with anyio.fail_after(timeout) if timeout is not None else nullcontext():
                await (self.func(info) if self.takes_run else self.func())
        except TimeoutError as exc:
            if timeout is None or time.monotonic() < started + timeout:
                await self._record(message, tick, started, exc)
                raise
            timed_out = TimeoutError(f"handler exceeded its timeout of {timeout}s")
            await self._record(message, tick, started, timed_out)
            raise timed_out from exc
        except Exception as exc:
            await self._record(message, tick, started, exc)
            raise
        await self._record(message, tick, started, None)

    async def _record(
        self, message: Message[Any], tick: int, started: float, exc: Exception | None
    ) -> None:
        if exc is None:
            outcome, counter, error = "ok", "succeeded", ""
        else:
            final = isinstance(exc, Reject) or (
                self.handler is not None and message.attempt > self.handler.max_retries
            )
            outcome, counter = ("failed", "failed") if final else ("retrying", "retried")
            error = f"{type(exc).__name__}: {exc}"[:500]
        fields: dict[str, str | int | float] = {
            "outcome": outcome,
            "outcome_tick": tick,
            "outcome_at": f"{time.time():.3f}",
            "duration": f"{time.monotonic() - started:.3f}",
            "attempt": message.attempt,
            "error": error,
        }
        try:
            await self.queue.mq.store.cron_record(self.queue.keys, fields, counter)
        except LeanMQError as err:
            get_logger("leanmq_async.cron").warning(
                "cron_record_failed", job=self.name, outcome=outcome, error=str(err)
            )


def _takes_run(func: Callable[..., Any]) -> bool:
    """True when the job takes one argument (a :class:`CronRun`), False for none."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot inspect job {func!r}: {exc}") from exc
    required = [
        p
        for p in sig.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if len(required) > 1 or any(p.kind is p.KEYWORD_ONLY for p in required):
        raise ConfigurationError(
            f"periodic job {func.__qualname__} must take no argument or one (a CronRun), "
            f"it requires {len(required)}"
        )
    return len(required) == 1


def _jitter_ms(jitter: object) -> int:
    if (
        isinstance(jitter, bool)
        or not isinstance(jitter, int | float)
        or not math.isfinite(jitter)
        or jitter < 0
    ):
        raise ConfigurationError(f"jitter must be a number of seconds >= 0, got {jitter!r}")
    return round(jitter * 1000)


def cron(
    mq: LeanMQ, expression: str | None, options: Mapping[str, Any]
) -> Callable[[JobFunc], JobFunc]:
    """The decorator behind ``@mq.cron(...)``: checks everything now, registers on use."""
    if callable(expression):
        raise ConfigurationError(
            "@mq.cron needs its schedule: @mq.cron('*/5 * * * *') or @mq.cron(every=30)"
        )
    unknown = set(options) - set(_HANDLER_OPTIONS) - set(_OWN_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown cron option(s) {sorted(unknown)}; valid: "
            f"{sorted((*_OWN_OPTIONS, *_HANDLER_OPTIONS))}"
        )
    schedule = parse_schedule(expression, options.get("every"), options.get("tz", "UTC"))
    missed = options.get("missed", "run_once")
    if missed not in ("run_once", "skip"):
        raise ConfigurationError(
            f"missed={missed!r}: use 'run_once' (a tick missed while no worker ran runs "
            "once at the next start) or 'skip' (it does not run)"
        )
    jitter_ms = _jitter_ms(options.get("jitter", 0))
    handler_options: dict[str, Any] = {"concurrency": 1}
    handler_options.update({k: v for k, v in options.items() if k in _HANDLER_OPTIONS})
    checked = HandlerOptions(**handler_options)  # refuses bad values now
    handler_options["timeout"] = None  # the job applies it, to record the outcome
    name = options.get("name")

    def decorate(func: JobFunc) -> JobFunc:
        is_async = inspect.iscoroutinefunction(func)  # (not narrowing func's type)
        if not is_async:
            raise ConfigurationError(
                f"periodic job {getattr(func, '__qualname__', func)!r} must be an "
                "`async def` function"
            )
        job_name = name if name is not None else func.__name__
        if not isinstance(job_name, str) or not job_name:
            raise ConfigurationError(f"name must be a non-empty string, got {job_name!r}")
        try:
            validate_queue_name(CRON_QUEUE_PREFIX + job_name)
        except ConfigurationError as exc:
            raise ConfigurationError(f"invalid job name {job_name!r}: {exc}") from exc
        if job_name in mq.cron_jobs:
            raise ConfigurationError(
                f"a periodic job named {job_name!r} is already registered: pass name= to "
                "tell the two apart"
            )
        job = CronJob(
            job_name,
            schedule,
            missed,
            jitter_ms,
            mq.queue(CRON_QUEUE_PREFIX + job_name),
            func,
            _takes_run(func),
            checked.timeout,
        )

        async def run_job(message: Message[Any]) -> None:
            await job.run(message)

        run_job.__module__ = func.__module__
        run_job.__qualname__ = run_job.__name__ = func.__qualname__
        job.handler = register_handler(job.queue, run_job, handler_options)
        mq.cron_jobs[job_name] = job
        return func

    return decorate
