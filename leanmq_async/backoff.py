"""Retry delays: the default exponential backoff with jitter, and how to build your own."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff", "exponential_backoff", "make_exponential_backoff"]

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
