"""Hash slots on a Redis Cluster: which slot a queue is in, and one-slot atomic sends."""

from __future__ import annotations

from collections.abc import Iterable

from redis.crc import key_slot

from leanmq_async.exceptions import ConfigurationError
from leanmq_async.store_types import SendOp


def queue_slot(stream_key: str) -> int:
    """The hash slot of a queue's keys (every key of a queue shares its tag)."""
    return int(key_slot(stream_key.encode()))


def check_one_slot(ops: Iterable[SendOp]) -> None:
    """Refuse an atomic send whose queues are in different cluster slots."""
    slots: dict[int, str] = {}
    for op in ops:
        slots.setdefault(queue_slot(op.keys.stream), op.keys.base)
    if len(slots) > 1:
        names = ", ".join(f"{name!r} (slot {slot})" for slot, name in sorted(slots.items()))
        raise ConfigurationError(
            f"on Redis Cluster an atomic send covers queues of one hash slot; {names} "
            "differ. Send to each queue in its own transaction (nothing was written)."
        )
