"""Rate limits on handler starts, enforced in Redis across every worker process.

``@queue.handler(rate_limit=RateLimit(100, per=1.0))``: at most 100 handler starts in any
window of one second, counted in Redis for every worker process together (the runtime
side is :mod:`leanmq_async.worker.limiter`, the atomic step ``lua/rate_limit.lua``).
With ``key=`` the limit holds per key: ``RateLimit(10, per=1.0, key=lambda m:
m.data["customer"])`` lets each customer start 10 per second, whatever the others do.

A message over its limit *waits*: the limiter grants it the next free start time, and the
message is held in the delayed set until then (it keeps that reservation, so it starts
when it comes back without asking again). Waiting is not a failure: it uses no retry
attempt, and holds no handler slot meanwhile.

Strict on the handlers' real starts: grants are spaced by ``per`` plus a *slack* (5 % of
``per``, at most 250 ms), and a handler starts only within the slack after its
grant (one that comes back later, a busy worker, asks again). So no window of ``per``
seconds ever holds more than ``limit`` starts, at the cost of a peak rate of ``limit``
per ``per + slack`` (about 5 % below the limit for windows up to 5 s).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from leanmq_async.exceptions import ConfigurationError
from leanmq_async.message import Message

__all__ = ["MAX_LIMIT", "RateLimit", "granted_start"]

MAX_LIMIT = 100_000
"""Most starts one limit allows per window: the limiter keeps one entry per start."""

_GRANTED: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "leanmq_granted_start", default=None
)


def granted_start() -> float | None:
    """In a rate-limited handler: when its start was granted, in seconds on the Redis
    clock (Unix time); None in a handler without a rate limit."""
    return _GRANTED.get()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` handler starts in any window of ``per`` seconds, across every
    worker process; with ``key`` (a function of the :class:`~leanmq_async.Message`
    returning a str or int), per key. A key function that raises dead-letters the
    message (reason ``rate limit key failed: ...``)."""

    limit: int
    per: float = 1.0
    key: Callable[[Message[Any]], Hashable] | None = None

    def __post_init__(self) -> None:
        limit, per = self.limit, self.per
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ConfigurationError(
                f"RateLimit(limit={limit!r}) is invalid: use an integer from 1 to {MAX_LIMIT} "
                "(starts per window)"
            )
        if (
            isinstance(per, bool)
            or not isinstance(per, int | float)
            or not math.isfinite(per)
            or not 0.001 <= per <= 86_400 * 30
        ):
            raise ConfigurationError(
                f"RateLimit(per={per!r}) is invalid: use a window in seconds from 0.001 to 30 days"
            )
        if self.key is not None and not callable(self.key):
            raise ConfigurationError(
                f"RateLimit(key={self.key!r}) is invalid: use a function of the Message "
                "returning the key (a str or int), or None for one limit"
            )

    @property
    def per_ms(self) -> int:
        """The window in whole milliseconds (the limiter's resolution)."""
        return max(1, round(self.per * 1000))

    @property
    def slack_ms(self) -> int:
        """How late after its grant a start may begin: 5 % of ``per``, 1 to 250 ms."""
        return min(250, max(1, round(self.per * 50)))
