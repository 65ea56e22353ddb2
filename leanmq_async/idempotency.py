"""Idempotent sends: a send with an explicit ``message_id`` is deduplicated per queue.

Within the dedup window (``LeanMQ(dedup_window=300.0)`` seconds by default, SQS FIFO's
five minutes; per call ``send_message(..., dedup_window=...)``; 0 turns it off) a second
send of the same ``message_id`` to the same queue writes nothing and returns the first
send's id (its stream id, or the schedule handle of a delayed send). The window counts
from the first send, on the Redis clock; a duplicate does not extend it. The payload of
a duplicate is not compared: the id alone decides.

The check and the write are one step of the send script (also for ``send_messages``,
transactions, partitioned queues, where a message id picks the partition when no key
is given, and Redis Cluster: the records live in the queue's hash slot). Records are
kept in two keys per queue (see :mod:`leanmq_async.keys`); expired ones are swept by
later sends and both keys expire after the longest window of their last send, so their
memory is bounded by the ids sent within one window. ``delete_queue`` and ``purge``
forget the records (a message sent again after a purge is written again).

A dedup hit is counted (``Store.dedup_hits``) and logged at debug level as
``send_deduplicated`` with the queue, the message id and the stream id returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from leanmq_async.exceptions import ConfigurationError

__all__ = ["DEFAULT_DEDUP_WINDOW", "dedup_window_ms", "per_item_ids"]

DEFAULT_DEDUP_WINDOW = 300.0
"""Seconds a sent ``message_id`` is remembered per queue (SQS FIFO's 5 minutes)."""


def dedup_window_ms(seconds: float, what: str = "dedup_window") -> int:
    """A dedup window in seconds (>= 0; 0: off) to whole milliseconds, or raise."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise ConfigurationError(
            f"{what} must be a number of seconds >= 0 (0: no deduplication), got {seconds!r}"
        )
    return max(1, round(seconds * 1000)) if seconds else 0


def per_item_ids(message_ids: Sequence[str | None] | None, n: int) -> list[str | None]:
    """``send_messages``' ``message_ids`` checked: one per item (None: generated)."""
    if message_ids is None:
        return [None] * n
    if isinstance(message_ids, str | bytes | bytearray) or not isinstance(message_ids, Sequence):
        raise ConfigurationError("message_ids must be a sequence of ids, one per item")
    if len(message_ids) != n:
        raise ConfigurationError(
            f"message_ids has {len(message_ids)} entries for {n} items: give one per item"
        )
    return list(message_ids)
