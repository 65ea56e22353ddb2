"""When a periodic job is due: five-field cron in a time zone, or a fixed interval.

Ticks are instants in ms since the Unix epoch (UTC), so every worker computes the same
ticks whatever its own time zone. A cron expression is evaluated in the job's time zone
by ``cronsim`` (Debian cron's rules at daylight-saving changes: a job at a time that does
not exist that day runs at the first minute after the gap; one at a time that happens
twice runs once, at the first). ``every=N`` ticks at the multiples of N since the epoch
(``every=3600`` runs on the hour, ``every=timedelta(days=1)`` at midnight UTC).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from leanmq_async.exceptions import ConfigurationError

__all__ = ["Schedule", "parse_schedule"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """A job's ticks: ``expression`` (cron, in ``tz``) or ``every_ms``; one of the two."""

    expression: str | None
    every_ms: int | None
    tz: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def describe(self) -> str:
        """``"*/5 * * * * (Europe/Berlin)"`` or ``"every 30s"``, for listings."""
        if self.expression is not None:
            return f"{self.expression} ({self.tz})"
        assert self.every_ms is not None
        seconds = self.every_ms / 1000
        return f"every {seconds:g}s"

    def interval_ms(self) -> int:
        """The shortest gap between two ticks, roughly (a cron job: the first two ahead)."""
        if self.every_ms is not None:
            return self.every_ms
        now = _ms(datetime.now(UTC))
        first = self.next_after(now)
        return self.next_after(first) - first

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms``."""
        if self.every_ms is not None:
            return (ms // self.every_ms + 1) * self.every_ms
        assert self.expression is not None
        start = datetime.fromtimestamp(ms / 1000, tz=self.zone)
        # cronsim works in whole seconds: from the second of ``ms`` on (strictly after it).
        ticks = CronSim(self.expression, start.replace(microsecond=0))
        return _first(ticks, lambda t: t > ms)

    def latest_at_or_before(self, ms: int) -> int:
        """The last tick at or before ``ms``."""
        if self.every_ms is not None:
            return ms // self.every_ms * self.every_ms
        assert self.expression is not None
        start = datetime.fromtimestamp(ms / 1000, tz=self.zone)
        # reverse=True from a time with microseconds includes that time's whole second
        # (replace, not + timedelta: arithmetic would lose ``fold`` in a repeated hour).
        ticks = CronSim(self.expression, start.replace(microsecond=1), reverse=True)
        return _first(ticks, lambda t: t <= ms)

    def at(self, ms: int) -> datetime:
        """Tick ``ms`` as an aware datetime in the job's time zone."""
        return datetime.fromtimestamp(ms / 1000, tz=self.zone)


def _ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def _first(ticks: CronSim, good: Callable[[int], bool]) -> int:
    """The first of ``ticks`` (in ms) that is ``good``: the first one, barring a
    daylight-saving corner case of the library (then a few more are looked at)."""
    tick = _ms(next(ticks))
    for _ in range(1000):
        if good(tick):
            break
        tick = _ms(next(ticks))
    return tick


def parse_schedule(expression: object, every: object, tz: object) -> Schedule:
    """Check a job's schedule: ``ConfigurationError`` says what to fix."""
    if (expression is None) == (every is None):
        raise ConfigurationError(
            "give a periodic job either a cron expression (@mq.cron('*/5 * * * *')) or "
            "every= (@mq.cron(every=30), seconds or a timedelta), not "
            + ("both" if expression is not None else "neither")
        )
    if not isinstance(tz, str) or not tz:
        raise ConfigurationError(
            f"tz must be an IANA time zone name like 'Europe/Berlin', got {tz!r}"
        )
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"unknown time zone {tz!r}: use an IANA name like 'UTC' or 'Europe/Berlin' "
            "(on a system without zone data, pip install tzdata)"
        ) from exc
    if every is not None:
        return Schedule(None, _every_ms(every), tz)
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ConfigurationError(
            f"cron expression {expression!r} must have five fields: minute hour "
            "day-of-month month day-of-week, like '*/5 * * * *' or '0 3 * * mon-fri'"
        )
    text = " ".join(expression.split())
    try:
        next(CronSim(text, datetime.now(ZoneInfo(tz))))
    except (CronSimError, ValueError, StopIteration) as exc:
        raise ConfigurationError(
            f"invalid cron expression {expression!r}: {exc} (five fields: minute hour "
            "day-of-month month day-of-week, e.g. '*/5 * * * *')"
        ) from exc
    return Schedule(text, None, tz)


def _every_ms(every: object) -> int:
    seconds: float
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        seconds = float(every)
    else:
        raise ConfigurationError(f"every must be seconds (a number) or a timedelta, got {every!r}")
    if not math.isfinite(seconds) or seconds < 0.001:
        raise ConfigurationError(
            f"every must be a positive interval of at least 1 ms, got {every!r}"
        )
    return round(seconds * 1000)
