"""Health checks with thresholds, and alert hooks called when a queue's level changes.

``await check_health(mq)`` grades every queue ``ok``, ``warning`` or ``critical`` against
:class:`HealthThresholds` (the defaults are the operations guide's: more than 1,000
unfinished messages is a warning, more than 5,000 critical; a DLQ with more than 10
messages is a warning, more than 100 critical). Redis unreachable is critical. The
report lists every issue per queue; the worst level is the report's status.

"Unfinished" (``backlog``) is what a consumer group has not acknowledged yet: waiting to
be delivered (``lag``) plus delivered and not acknowledged (Redis's ``pending``). That
is what "pending items" means in a queue that is a list or a sorted set. Redis's own
pending count (PEL) has separate thresholds, off by default.

:class:`HealthWatcher` runs the check every ``interval`` seconds and calls your
callbacks (plain or ``async`` functions) with an :class:`AlertEvent` each time a queue
crosses a level, up or down. No integration is built in: post to a webhook, send an
email or page someone from the callback.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Literal

import anyio
import msgspec
from anyio.abc import TaskStatus

from leanmq_async._log import get_logger
from leanmq_async.exceptions import ConfigurationError, LeanMQConnectionError, LeanMQError
from leanmq_async.ops.stats import QueueStats, Stats, collect_stats

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = [
    "EXIT_CODES",
    "AlertEvent",
    "AlertHook",
    "HealthIssue",
    "HealthReport",
    "HealthThresholds",
    "HealthWatcher",
    "Level",
    "check_health",
    "evaluate",
]

Level = Literal["ok", "warning", "critical"]
_RANK: dict[str, int] = {"ok": 0, "warning": 1, "critical": 2}
EXIT_CODES: dict[str, int] = dict(_RANK)
"""Exit code per status for cron jobs: ok 0, warning 1, critical 2."""

REDIS = "<redis>"
"""The name the Redis connection goes by in :attr:`HealthReport.queues` and alerts."""


def worst(levels: Iterable[Level]) -> Level:
    """The most severe of ``levels`` (``ok`` for none)."""
    out: Level = "ok"
    for level in levels:
        if _RANK[level] > _RANK[out]:
            out = level
    return out


class HealthThresholds(msgspec.Struct, frozen=True, kw_only=True):
    """Levels are reached when a value is strictly above the threshold; None disables."""

    backlog_warning: int | None = 1_000
    backlog_critical: int | None = 5_000
    dlq_warning: int | None = 10
    dlq_critical: int | None = 100
    pending_warning: int | None = None
    pending_critical: int | None = None
    oldest_pending_warning_s: float | None = None
    oldest_pending_critical_s: float | None = None

    def __post_init__(self) -> None:
        for check in ("backlog", "dlq", "pending", "oldest_pending"):
            suffix = "_s" if check == "oldest_pending" else ""
            warn = getattr(self, f"{check}_warning{suffix}")
            crit = getattr(self, f"{check}_critical{suffix}")
            for value in (warn, crit):
                if value is not None and (isinstance(value, bool) or value < 0):
                    raise ConfigurationError(f"{check} thresholds must be >= 0, got {value!r}")
            if warn is not None and crit is not None and warn > crit:
                raise ConfigurationError(
                    f"{check} warning threshold ({warn}) is above the critical one ({crit})"
                )


class HealthIssue(msgspec.Struct, kw_only=True):
    """One threshold a queue is over."""

    queue: str
    check: str
    """``backlog``, ``dlq``, ``pending``, ``oldest_pending``, ``error``, ``redis``,
    ``memory`` (Redis above 90 % of ``maxmemory``; critical when full with ``noeviction``)
    or ``legacy`` (a LeanMQ 0.2 queue with messages not migrated yet)."""
    level: Level
    value: float
    threshold: float | None
    message: str


class HealthReport(msgspec.Struct, kw_only=True):
    """The result of a health check (JSON: ``msgspec.json.encode(report)``)."""

    status: Level
    redis: bool
    checked_at: float | None
    """The Redis clock, unix seconds (None when Redis was unreachable)."""
    queues: dict[str, Level]
    issues: list[HealthIssue]
    error: str | None = None
    thresholds: HealthThresholds = HealthThresholds()

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warning, 2 critical (for cron jobs and monitoring agents)."""
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = msgspec.to_builtins(self)
        return out


def _fmt(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"


def _grade(
    queue: str,
    check: str,
    value: float | None,
    warning: float | None,
    critical: float | None,
    what: str,
) -> HealthIssue | None:
    if value is None:
        return None
    for level, threshold in (("critical", critical), ("warning", warning)):
        if threshold is not None and value > threshold:
            return HealthIssue(
                queue=queue,
                check=check,
                level=level,  # type: ignore[arg-type]
                value=value,
                threshold=threshold,
                message=f"{queue}: {what} is {_fmt(value)} "
                f"(over the {level} threshold {_fmt(threshold)})",
            )
    return None


def _queue_issues(q: QueueStats, t: HealthThresholds) -> list[HealthIssue]:
    issues: list[HealthIssue] = []
    if q.error:
        issues.append(
            HealthIssue(
                queue=q.name,
                check="error",
                level="critical",
                value=1,
                threshold=None,
                message=f"{q.name}: {q.error}",
            )
        )
    detail = f"unfinished messages (lag {q.lag if q.lag is not None else '?'}"
    detail += f" + pending {q.pending})"
    checks = (
        ("backlog", q.backlog, t.backlog_warning, t.backlog_critical, detail),
        ("dlq", q.dlq_length, t.dlq_warning, t.dlq_critical, "the dead-letter queue depth"),
        ("pending", q.pending, t.pending_warning, t.pending_critical, "the pending count"),
        (
            "oldest_pending",
            q.oldest_pending_age_s,
            t.oldest_pending_warning_s,
            t.oldest_pending_critical_s,
            "the age in seconds of the oldest pending message",
        ),
    )
    for check, value, warning, critical, what in checks:
        issue = _grade(q.name, check, value, warning, critical, what)
        if issue is not None:
            issues.append(issue)
    return issues


def evaluate(stats: Stats, thresholds: HealthThresholds | None = None) -> HealthReport:
    """Grade a stats snapshot (no I/O): what :func:`check_health` does after collecting."""
    t = thresholds or HealthThresholds()
    issues: list[HealthIssue] = []
    levels: dict[str, Level] = {REDIS: "ok"}
    for q in stats.queues:
        found = _queue_issues(q, t)
        levels[q.name] = worst(i.level for i in found)
        issues += found
    # --- migration from LeanMQ 0.2 (issue 15): unmigrated messages are a warning ---
    if stats.legacy:
        from leanmq_async.legacy import legacy_notice

        for old in stats.legacy:
            if not old.total:
                continue  # migrated (only acknowledged history left), or empty
            issues.append(
                HealthIssue(
                    queue=old.name,
                    check="legacy",
                    level="warning",
                    value=float(old.total),
                    threshold=None,
                    message=legacy_notice([old]),
                )
            )
            levels[f"{old.name} (LeanMQ 0.2)"] = "warning"
    # --- end migration from LeanMQ 0.2 ---
    return HealthReport(
        status=worst(levels.values()),
        redis=True,
        checked_at=stats.collected_at,
        queues=levels,
        issues=issues,
        thresholds=t,
    )


async def check_health(
    mq: LeanMQ,
    thresholds: HealthThresholds | None = None,
    *,
    queues: Iterable[str] | None = None,
) -> HealthReport:
    """Check Redis and every queue (or those named) against ``thresholds``.

    Never raises for Redis being down: the report is then ``critical`` with ``redis``
    False and the error.
    """
    t = thresholds or HealthThresholds()
    try:
        stats = await collect_stats(mq, queues)
    except LeanMQError as exc:
        message = f"Redis check failed: {exc}"
        return HealthReport(
            status="critical",
            redis=not isinstance(exc, LeanMQConnectionError),
            checked_at=None,
            queues={REDIS: "critical"},
            issues=[
                HealthIssue(
                    queue=REDIS,
                    check="redis",
                    level="critical",
                    value=1,
                    threshold=None,
                    message=message,
                )
            ],
            error=str(exc),
            thresholds=t,
        )
    report = evaluate(stats, t)
    try:
        usage = await mq.store.memory()
    except LeanMQError as exc:  # INFO refused (an ACL without it): reported, not fatal
        usage = None
        mq.log.warning("memory_check_failed", error=str(exc))
    if usage is not None and usage.under_pressure:
        level: Level = "critical" if usage.full else "warning"
        report.issues.append(
            HealthIssue(
                queue=REDIS,
                check="memory",
                level=level,
                value=round(usage.ratio, 3),
                threshold=usage.PRESSURE,
                message=usage.advice(),
            )
        )
        report.queues[REDIS] = level
        report.status = worst(report.queues.values())
    return report


# -- alerts -------------------------------------------------------------------------------


class AlertEvent(msgspec.Struct, kw_only=True):
    """A queue (or Redis, as ``"<redis>"``) moved from one level to another."""

    queue: str
    previous: Level
    current: Level
    issues: list[HealthIssue]
    """The queue's issues now (empty when it recovered)."""
    report: HealthReport

    @property
    def escalated(self) -> bool:
        return _RANK[self.current] > _RANK[self.previous]


AlertHook = Callable[[AlertEvent], Awaitable[None] | None]
"""A callback for :class:`HealthWatcher`: ``def hook(event)`` or ``async def hook(event)``."""


class HealthWatcher:
    """Checks health every ``interval`` seconds; calls the hooks when a level changes.

    Every queue starts at ``ok``, so the first check reports queues already in trouble.
    A queue that disappears goes back to ``ok``. A hook that raises is logged
    (``alert_hook_failed``) and does not stop the watcher or the other hooks.

        watcher = HealthWatcher(mq, callbacks=[notify], interval=30)
        tg.start_soon(watcher.run)
    """

    def __init__(
        self,
        mq: LeanMQ,
        callbacks: Iterable[AlertHook] = (),
        *,
        interval: float = 30.0,
        thresholds: HealthThresholds | None = None,
        queues: Iterable[str] | None = None,
    ) -> None:
        if not interval > 0:
            raise ConfigurationError(f"interval must be > 0 seconds, got {interval!r}")
        self.mq = mq
        self.callbacks = list(callbacks)
        self.interval = interval
        self.thresholds = thresholds or HealthThresholds()
        self.queues = list(queues) if queues is not None else None
        self.levels: dict[str, Level] = {}
        self.last_report: HealthReport | None = None
        self.log = get_logger("leanmq_async.ops", prefix=mq.prefix)

    def __repr__(self) -> str:
        status = self.last_report.status if self.last_report else "unchecked"
        return f"<HealthWatcher {status} interval={self.interval:g}s hooks={len(self.callbacks)}>"

    def add_callback(self, hook: AlertHook) -> AlertHook:
        """Register a hook (usable as a decorator)."""
        self.callbacks.append(hook)
        return hook

    async def check_once(self) -> list[AlertEvent]:
        """Run one check, call the hooks for every change, and return the changes."""
        report = await check_health(self.mq, self.thresholds, queues=self.queues)
        self.last_report = report
        events: list[AlertEvent] = []
        names = list(dict.fromkeys([*self.levels, *report.queues]))
        for name in names:
            previous = self.levels.get(name, "ok")
            current = report.queues.get(name, "ok")
            if name == REDIS or report.checked_at is not None:
                self.levels[name] = current
            else:  # the check failed: the queues' levels are unknown, keep them
                continue
            if current != previous:
                events.append(
                    AlertEvent(
                        queue=name,
                        previous=previous,
                        current=current,
                        issues=[i for i in report.issues if i.queue == name],
                        report=report,
                    )
                )
        for name in [n for n, level in self.levels.items() if level == "ok"]:
            if name not in report.queues:
                del self.levels[name]
        for event in events:
            self.log.info(
                "health_changed", queue=event.queue, previous=event.previous, level=event.current
            )
            await self._notify(event)
        return events

    async def _notify(self, event: AlertEvent) -> None:
        for hook in self.callbacks:
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - a user's hook must not stop the watcher
                self.log.error(
                    "alert_hook_failed",
                    hook=getattr(hook, "__qualname__", repr(hook)),
                    queue=event.queue,
                    error=repr(exc),
                )

    async def run(
        self,
        *,
        iterations: int | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Check every ``interval`` seconds until cancelled (or ``iterations`` checks)."""
        task_status.started()
        done = 0
        while iterations is None or done < iterations:
            await self.check_once()
            done += 1
            if iterations is not None and done >= iterations:
                break
            await anyio.sleep(self.interval)
