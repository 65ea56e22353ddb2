"""Sorting entries read from a stream, shared by ``get_messages`` and the worker.

Every entry read is exactly one of: a message to hand out, an expired message, an entry
meant for another consumer group, or a bad entry (undecodable, deleted, oversized) that
must go to the dead-letter queue with its reason. Nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from leanmq_async.envelope import DLQ_FIELD_PREFIX, DecodedEntry, decode_entry
from leanmq_async.exceptions import MessageDecodeError
from leanmq_async.message import DeadLetterInfo, Message

__all__ = [
    "BAD",
    "FOREIGN",
    "GOOD",
    "Triage",
    "dead_letter_info",
    "expired",
    "to_message",
    "triage",
    "triage_entry",
]

# The verdicts of :func:`triage_entry`.
GOOD = "good"  # for this group: a message, unless :func:`expired`
FOREIGN = "foreign"  # meant for another consumer group
BAD = "bad"  # undecodable, deleted or oversized: dead-lettered with its reason


class Triage:
    """Entries of one read, sorted by what must happen to them."""

    __slots__ = ("bad", "expired", "foreign", "good")

    def __init__(self) -> None:
        self.good: list[tuple[str, DecodedEntry]] = []
        # Expired by the reader's clock estimate: to be confirmed by Redis before settling.
        self.expired: list[tuple[str, DecodedEntry]] = []
        self.foreign: list[str] = []
        self.bad: list[tuple[str, str]] = []


def triage_entry(
    fields: Mapping[bytes, bytes] | None, group: str, max_size: int
) -> tuple[str, DecodedEntry | str]:
    """Sort one entry for consumer group ``group``: ``(verdict, decoded entry)``.

    The verdict is :data:`GOOD` or :data:`FOREIGN` with the decoded entry, or :data:`BAD`
    with the reason (the decode error's text) in place of the entry. A good entry may
    still have :func:`expired`.
    """
    try:
        entry = decode_entry(fields, max_size)
    except MessageDecodeError as exc:
        return BAD, str(exc)
    if entry.target_group is not None and entry.target_group != group:
        return FOREIGN, entry
    return GOOD, entry


def expired(entry: DecodedEntry, now_ms: float) -> bool:
    """Has ``entry`` expired by ``now_ms``, the reader's estimate of the Redis clock?

    An estimate: the caller settles an expired entry only if Redis agrees.
    """
    return entry.expires_at_ms is not None and entry.expires_at_ms <= now_ms


def triage(
    entries: Iterable[tuple[bytes, Mapping[bytes, bytes] | None]],
    group: str,
    now_ms: float,
    max_size: int,
) -> Triage:
    """Sort raw ``(stream id, fields)`` entries for consumer group ``group``."""
    out = Triage()
    for raw_id, fields in entries:
        sid = raw_id.decode()
        verdict, entry = triage_entry(fields, group, max_size)
        if isinstance(entry, str):
            out.bad.append((sid, entry))
        elif verdict is FOREIGN:
            out.foreign.append(sid)
        elif expired(entry, now_ms):
            out.expired.append((sid, entry))
        else:
            out.good.append((sid, entry))
    return out


def to_message(
    sid: str,
    entry: DecodedEntry,
    payload: Any,
    queue: str,
    delivery_count: int = 1,
    dead_letter: DeadLetterInfo | None = None,
) -> Message[Any]:
    """Build the :class:`Message` handed to a reader or handler."""
    return Message(
        id=sid,
        data=payload,
        timestamp=entry.timestamp,
        delivery_count=delivery_count,
        message_id=entry.message_id,
        attempt=entry.attempts + 1,
        headers=entry.headers,
        queue=queue,
        expires_at=entry.expires_at_ms / 1000 if entry.expires_at_ms is not None else None,
        dead_letter=dead_letter,
    )


def dead_letter_info(fields: Mapping[bytes, bytes] | None) -> DeadLetterInfo | None:
    """The ``dlq.*`` metadata of a dead-letter entry, or None on other entries."""
    if not fields:
        return None
    meta = {
        k[len(DLQ_FIELD_PREFIX) :].decode(errors="replace"): v.decode(errors="replace")
        for k, v in fields.items()
        if k.startswith(DLQ_FIELD_PREFIX)
    }
    if not meta:
        return None
    try:
        attempts = int(meta.get("attempts") or 0)
        failed_at = float(meta.get("at") or 0.0)
    except ValueError:
        attempts, failed_at = 0, 0.0
    return DeadLetterInfo(
        reason=meta.get("reason", ""),
        error_type=meta.get("error", ""),
        traceback=meta.get("traceback", ""),
        attempts=attempts,
        failed_at=failed_at,
        source_queue=meta.get("queue", ""),
        source_id=meta.get("id", ""),
        group=meta.get("group", ""),
    )
