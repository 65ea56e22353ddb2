"""The worker's retry delay: the user's backoff, or the default one if it misbehaves."""

from __future__ import annotations

import math
from typing import Any

from leanmq_async.backoff import Backoff, exponential_backoff, make_exponential_backoff

__all__ = ["Backoff", "exponential_backoff", "make_exponential_backoff", "retry_delay"]


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
