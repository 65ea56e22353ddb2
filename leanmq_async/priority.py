"""Message priorities: the levels, the ids of entries of a level stream, the read order.

A queue has three levels (:data:`~leanmq_async.keys.LEVELS`): ``0`` (``"low"``), ``1``
(``"normal"``, the default) and ``2`` (``"high"``). The default level is the queue's main
stream, so a queue that never uses priorities is stored and read exactly as before; each
other level is a stream of its own in the queue's hash tag (``{q}:p0``, ``{q}:p2``, see
:mod:`leanmq_async.keys`), with its own consumer groups, delayed and expiry keys.

An entry of a level stream is named ``<stream id>:p<level>`` (e.g. ``1700000000000-0:p2``)
wherever an id leaves the store (a send's return value, ``Message.id``, the worker's
bookkeeping): stream ids of two streams can be equal, these names cannot. An entry of the
main stream keeps its plain stream id.

Starvation guard: a worker reads highest level first, except every
:data:`GUARD_EVERY`-th claim of a runner, which reads lowest level first.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from leanmq_async.exceptions import ConfigurationError
from leanmq_async.keys import DEFAULT_LEVEL, LEVELS, QueueKeys

__all__ = [
    "GUARD_EVERY",
    "LEVEL_CHECK",
    "Priority",
    "by_level",
    "claim_order",
    "level_bid",
    "level_id",
    "level_of",
    "split_bid",
    "split_id",
]

LEVEL_CHECK = 1.0
"""Seconds between a worker's checks whether a queue it reads plainly has started using
priorities (a level's stream or delayed set exists): one EXISTS, until one does."""

GUARD_EVERY = 20
"""One claim in this many reads the levels lowest first, so no level waits forever."""


class Priority(IntEnum):
    """The priority levels of ``send_message(..., priority=...)``: higher runs first."""

    LOW = 0
    NORMAL = 1
    HIGH = 2


_NAMES = {p.name.lower(): int(p) for p in Priority}


def level_of(priority: int | str | None) -> int:
    """The level of a ``priority=`` argument: 0..2, ``"low"``, ``"normal"``, ``"high"``."""
    if priority is None:
        return DEFAULT_LEVEL
    if isinstance(priority, str):
        level = _NAMES.get(priority.lower())
        if level is not None:
            return level
    elif isinstance(priority, int) and not isinstance(priority, bool) and priority in LEVELS:
        return int(priority)
    raise ConfigurationError(
        f"priority must be 0 (low), 1 (normal) or 2 (high), or one of 'low', 'normal', "
        f"'high' (leanmq_async.Priority), got {priority!r}"
    )


def level_id(sid: str, level: int) -> str:
    """The name of entry ``sid`` of level ``level``'s stream (the main stream's: ``sid``)."""
    return sid if level == DEFAULT_LEVEL else f"{sid}:p{level}"


def split_id(name: str) -> tuple[str, int]:
    """The stream id and the level of an entry's name (see :func:`level_id`)."""
    sid, sep, level = name.rpartition(":p")
    if sep and level.isdigit() and int(level) in LEVELS:
        return sid, int(level)
    return name, DEFAULT_LEVEL


def split_bid(name: bytes) -> tuple[bytes, int]:
    """:func:`split_id` of a name as bytes (the worker's ids)."""
    sid, sep, level = name.rpartition(b":p")
    if sep and level.isdigit() and int(level) in LEVELS:
        return sid, int(level)
    return name, DEFAULT_LEVEL


def level_bid(sid: bytes, level: int) -> bytes:
    """:func:`level_id` of a stream id as bytes."""
    return sid if level == DEFAULT_LEVEL else b"%s:p%d" % (sid, level)


def by_level(keys: QueueKeys, main: str, names: Iterable[bytes]) -> dict[str, list[bytes]]:
    """Entry names grouped by stream: the level's stream -> the stream ids (in order).

    ``main``: the stream the default level's names are of (a dead-letter queue's own).
    """
    out: dict[str, list[bytes]] = {}
    for name in names:
        sid, level = split_bid(name)
        stream = main if level == DEFAULT_LEVEL else keys.at(level).stream
        out.setdefault(stream, []).append(sid)
    return out


def claim_order(keys: QueueKeys, claims: int) -> tuple[QueueKeys, ...]:
    """The levels the ``claims``-th claim (0-based) reads, in order: highest first, or
    lowest first every :data:`GUARD_EVERY`-th claim (the starvation guard)."""
    levels = keys.levels()
    if claims % GUARD_EVERY == GUARD_EVERY - 1:
        return tuple(reversed(levels))
    return levels
