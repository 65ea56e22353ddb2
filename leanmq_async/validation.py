"""Checks of caller input to the queue API: stream ids, seconds, TTL and delay."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from leanmq_async.exceptions import (
    ConfigurationError,
    InvalidMessageIdError,
)

_STREAM_ID = re.compile(r"([0-9]+)-([0-9]+)")
_LEVEL_ID = re.compile(r"[0-9]+-[0-9]+:p[0-9]")  # priority.level_id
_MAX_ID_PART = 2**64 - 1


def validate_ids(ids: Iterable[str | bytes]) -> list[str]:
    """Normalise stream ids to str; raise :class:`InvalidMessageIdError` on a malformed one."""
    if ids is None:
        raise InvalidMessageIdError("pass a list of message ids, got None")
    if isinstance(ids, str | bytes):
        raise InvalidMessageIdError(
            f"pass a list of message ids, not a single id: [{ids!r}] instead of {ids!r}"
        )
    out = []
    for mid in ids:
        sid = mid.decode(errors="replace") if isinstance(mid, bytes) else mid
        match = _STREAM_ID.fullmatch(sid) if isinstance(sid, str) else None
        # Both parts are unsigned 64-bit in Redis: a larger one is refused by the server,
        # possibly half-way through a script.
        if match is None or any(
            len(part) > 20 or int(part) > _MAX_ID_PART for part in match.groups()
        ):
            if isinstance(sid, str) and _LEVEL_ID.fullmatch(sid):
                raise InvalidMessageIdError(
                    f"{mid!r} names a message of a priority level (':p0' low, ':p2' high): "
                    "those are read and settled by workers; get_messages and the calls "
                    "taking ids work on the normal level (see README 'Priorities')"
                )
            raise InvalidMessageIdError(
                f"{mid!r} is not a stream id like '1700000000000-0'; use Message.id "
                "(not Message.message_id)"
            )
        out.append(sid)
    return out


def id_key(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq)


def to_ms(seconds: float | None, what: str) -> int:
    """Seconds (None or > 0) to whole milliseconds, or :class:`ConfigurationError`."""
    if seconds is None:
        return 0
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise ConfigurationError(f"{what} must be a positive number of seconds, got {seconds!r}")
    return max(1, round(seconds * 1000))


def check_ttl_and_delay(ttl: float | None, delay: float | None) -> tuple[int, int]:
    """``(ttl_ms, delay_ms)``, or :class:`ConfigurationError` for a bad value, or for a
    ``delay`` not shorter than ``ttl`` (both count from the send)."""
    ttl_ms, delay_ms = to_ms(ttl, "ttl"), to_ms(delay, "delay")
    if ttl_ms and delay_ms >= ttl_ms:
        raise ConfigurationError(
            f"delay ({delay}s) must be shorter than ttl ({ttl}s): both count from the "
            "send, so this message would expire before it becomes visible; use a "
            "longer ttl (or no ttl)"
        )
    return ttl_ms, delay_ms
