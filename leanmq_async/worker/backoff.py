"""Retry delays: the default exponential backoff with jitter, and how to build your own."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

__all__ = ["Backoff", "exponential_backoff", "make_exponential_backoff", "retry_delay"]

Backoff = Callable[[int], float]
"""A function of the retry number (1 for the first retry) returning seconds to wait."""


def make_exponential_backoff(base: float = 1.0, cap: float = 60.0, jitter: float = 0.5) -> Backoff:
    """``base * 2**(n-1)`` seconds capped at ``cap``; up to ``jitter`` of it taken off at random.

    With the defaults: about 1, 2, 4, 8 … 60 s, each between 50 % and 100 % of that, so
    workers that failed together do not retry together.
    """
    if base < 0 or cap < 0 or not 0 <= jitter <= 1:
        raise ValueError("base and cap must be >= 0 and jitter within [0, 1]")

    def backoff(retry: int) -> float:
        delay = min(cap, base * 2.0 ** max(0, retry - 1))
        return float(delay * (1 - jitter * random.random()))

    return backoff


exponential_backoff: Backoff = make_exponential_backoff()


def retry_delay(backoff: Backoff, attempt: int, log: Any) -> float:
    """``backoff(attempt)``, or the default backoff's if the user's function misbehaves.

    A backoff function that raises or returns something other than a finite number
    >= 0 must not kill the worker (nor lose the message): it is logged
    (``backoff_failed``), and the retry waits the default exponential backoff.
    """
    try:
        seconds = float(backoff(attempt))
    except Exception as exc:  # noqa: BLE001 - user code; reported, never fatal
        log.error("backoff_failed", attempt=attempt, error=repr(exc))
        return exponential_backoff(attempt)
    if not math.isfinite(seconds) or seconds < 0:
        log.error("backoff_failed", attempt=attempt, error=f"returned {seconds!r}")
        return exponential_backoff(attempt)
    return seconds
