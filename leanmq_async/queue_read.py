"""Reading a queue for the caller: group reads, triage of what was read, peeking, info."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from leanmq_async.envelope import decode_entry, decode_payload
from leanmq_async.exceptions import (
    ConfigurationError,
    MessageDecodeError,
    QueueNotFoundError,
    RedisOperationError,
)
from leanmq_async.legacy import legacy_hint
from leanmq_async.message import Message, QueueInfo
from leanmq_async.reading import dead_letter_info, to_message, triage
from leanmq_async.store import RawEntry
from leanmq_async.validation import id_key, to_ms

if TYPE_CHECKING:
    from leanmq_async.queue import Queue

# A blocking read never waits longer than this in one command, so a dead connection is
# noticed within the socket timeout; longer waits are split into several reads.
_MAX_BLOCK_CHUNK_MS = 5_000


async def read_messages(
    queue: Queue[Any],
    count: int = 1,
    block_for_seconds: float | None = None,
    consumer_id: str | None = None,
) -> list[Message[Any]]:
    """:meth:`Queue.get_messages <leanmq_async.Queue.get_messages>` (see its contract)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigurationError(f"count must be a positive integer, got {count!r}")
    consumer = consumer_id or queue.mq.consumer_name
    store = queue.mq.store
    wait_ms = to_ms(block_for_seconds, "block_for_seconds") if block_for_seconds else 0
    deadline = anyio.current_time() + wait_ms / 1000
    # Each read of a main queue first moves its due delayed messages into the stream
    # and learns when the next one is due (-1: none waiting). The first read does not
    # block, so that a blocking one wakes when the next delayed message comes due.
    next_due_ms = -1
    first = True
    while True:
        block = None
        if wait_ms and (queue.is_dlq or not first):
            block = min(wait_ms, _MAX_BLOCK_CHUNK_MS)
            if next_due_ms >= 0:
                block = max(1, min(block, next_due_ms))
        try:
            if queue.is_dlq:
                raw = await store.read_group(
                    queue.stream, queue.consumer_group, consumer, count, block
                )
            else:
                raw, next_due_ms = await store.read_after_due(
                    queue.keys, queue.consumer_group, consumer, count, block
                )
        except RedisOperationError as exc:
            if "NOGROUP" not in str(exc):
                raise
            raise QueueNotFoundError(
                f"queue {queue.name!r} has no consumer group {queue.consumer_group!r} "
                f"under prefix {queue.mq.prefix!r}; create it with "
                f"await mq.create_queue_pair({queue.base_name!r})"
                + await legacy_hint(queue.mq, queue.base_name)  # LeanMQ 0.2 (issue 15)
            ) from exc
        if raw:
            if queue.is_dlq:
                return dlq_messages(queue, raw)
            messages = await _sort_out(queue, raw, consumer)
            if messages:
                return messages
            # Only expired, foreign or bad entries: they are settled; read on.
        elif not wait_ms:
            return []
        first = False
        if wait_ms:
            wait_ms = int((deadline - anyio.current_time()) * 1000)
            if wait_ms <= 0:
                return []


async def _sort_out(queue: Queue[Any], raw: list[RawEntry], consumer: str) -> list[Message[Any]]:
    """Settle the expired, foreign and undecodable entries of a read; the rest as messages."""
    store = queue.mq.store
    now = await store.redis_now_ms()
    sorted_ = triage(raw, queue.consumer_group, now, queue.mq.codec.max_message_size)
    good = sorted_.good
    expired = 0
    if sorted_.expired:
        # The local estimate said expired; Redis confirms it (and acks) atomically.
        calls = [
            store.expire_read_call(
                queue.keys,
                queue.consumer_group,
                consumer,
                queue.name,
                "drop",
                sid,
                entry.expires_at_ms or 0,
            )
            for sid, entry in sorted_.expired
        ]
        results = await store.settle_many(calls)
        live = False
        for (sid, entry), result in zip(sorted_.expired, results, strict=True):
            if isinstance(result, Exception):
                raise result
            if result == 0:
                good.append((sid, entry))
                live = True
            elif result == 1:
                expired += 1
        if live:
            good.sort(key=lambda item: id_key(item[0]))
    messages = []
    for sid, entry in good:
        try:
            payload = decode_payload(entry, queue.payload_type)
        except MessageDecodeError as exc:
            sorted_.bad.append((sid, str(exc)))
            continue
        messages.append(to_message(sid, entry, payload, queue.name))
    if sorted_.foreign:
        await store.ack(queue.stream, queue.consumer_group, sorted_.foreign)
    if expired:
        queue.mq.log.info("expired", queue=queue.name, count=expired)
    if sorted_.bad:
        items = [(sid, reason, "MessageDecodeError", "", 0) for sid, reason in sorted_.bad]
        await store.dead_letter(queue.keys, queue.consumer_group, consumer, queue.name, items)
        queue.mq.log.warning("dead_lettered", queue=queue.name, count=len(items))
    return messages


def dlq_messages(queue: Queue[Any], raw: list[RawEntry]) -> list[Message[Any]]:
    """Dead letters as messages with their failure details (undecodable ones with no data)."""
    out = []
    for raw_id, fields in raw:
        info = dead_letter_info(fields)
        try:
            entry = decode_entry(fields, queue.mq.codec.max_message_size)
            payload = decode_payload(entry)
        except MessageDecodeError:
            out.append(
                Message(
                    id=raw_id.decode(),
                    data=None,
                    timestamp=0.0,
                    queue=queue.name,
                    dead_letter=info,
                )
            )
            continue
        out.append(to_message(raw_id.decode(), entry, payload, queue.name, 1, info))
    return out


async def peek_messages(queue: Queue[Any], count: int = 10, start: str = "-") -> list[Message[Any]]:
    """Read up to ``count`` entries from ``start`` without consuming them (XRANGE)."""
    raw = await queue.mq.store.range(queue.stream, start, "+", count)
    if queue.is_dlq:
        return dlq_messages(queue, raw)
    out = []
    for raw_id, fields in raw:
        try:
            entry = decode_entry(fields, queue.mq.codec.max_message_size)
            payload = decode_payload(entry, queue.payload_type)
            out.append(to_message(raw_id.decode(), entry, payload, queue.name))
        except MessageDecodeError:
            out.append(Message(id=raw_id.decode(), data=None, timestamp=0.0, queue=queue.name))
    return out


def info_from(queue: Queue[Any], info: dict[str, Any]) -> QueueInfo:
    """The :class:`QueueInfo` of ``queue`` from what the store read about its stream (and
    its priority levels': their entries count in the message, pending and delayed counts)."""
    pending = 0
    names = []
    for group in info["groups"]:
        name = group["name"].decode()
        names.append(name)
        if name == queue.consumer_group:
            pending = int(group["pending"])
    for groups in info.get("level_groups", ()):  # priority levels (see priority.py)
        pending += sum(
            int(g["pending"]) for g in groups if g["name"].decode() == queue.consumer_group
        )
    created = info["meta"].get("created_at")
    return QueueInfo(
        name=queue.name,
        is_dlq=queue.is_dlq,
        message_count=info["length"],
        consumer_group=queue.consumer_group,
        pending_messages=pending,
        created_at=float(created) if created else None,
        delayed_messages=0 if queue.is_dlq else info["delayed"],
        consumer_groups=tuple(names),
    )
