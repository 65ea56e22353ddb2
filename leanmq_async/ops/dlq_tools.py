"""Operator tools: inspect and requeue dead letters, purge, clear, clean up, force-process.

Every function takes the client and a queue's name (``"orders"``; ``"orders:dlq"`` is
accepted where a DLQ is meant) and returns a report of exactly what it did (or, with
``dry_run=True``, would do). Destructive ones (:func:`purge_dead_letters`,
:func:`clear_queue`) refuse with :class:`ConfirmationRequiredError` unless
``confirm=True``. Nothing here consumes a message: listing uses XRANGE.

``force_process`` is for messages stuck in a consumer group's pending list (delivered to
a consumer that died or hangs): it re-delivers up to ``batch_size`` of those idle for at
least ``min_idle`` seconds *now*, as fresh entries any consumer of the group reads next
(a running worker, or ``get_messages``), instead of waiting for a worker's reclaim after
the lease, or forever for readers that never reclaim. Each is claimed for an admin
consumer (only if still idle, so a live consumer's message is never taken), copied to
the tail of the stream for that group with its attempts and expiry, and acknowledged, in
one script per message (the worker's retry script, delay 0). The admin consumer is
removed afterwards. Should the call stop half-way, a claimed message stays pending and a
worker reclaims it after its lease: none is lost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from leanmq_async.exceptions import (
    ConfigurationError,
    ConfirmationRequiredError,
    RedisOperationError,
)
from leanmq_async.keys import DLQ_SUFFIX, QueueKeys, make_consumer_name, validate_queue_name
from leanmq_async.message import Message
from leanmq_async.validation import validate_ids

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.queue import Queue
    from leanmq_async.store import RawEntry

__all__ = [
    "CancelReport",
    "CleanupReport",
    "ClearReport",
    "ConfirmationRequiredError",
    "ForceProcessReport",
    "PendingMessage",
    "PurgeReport",
    "RequeueReport",
    "SkippedMessage",
    "cancel_message",
    "cleanup",
    "clear_queue",
    "force_process",
    "get_dead_letter",
    "list_dead_letters",
    "purge_dead_letters",
    "requeue_dead_letters",
]

_PAGE = 500
_ADMIN_CONSUMER_PREFIX = "leanmq-admin:"


class SkippedMessage(msgspec.Struct):
    """An id an operation left alone, and why."""

    id: str
    reason: str


class RequeueReport(msgspec.Struct, kw_only=True):
    queue: str
    dry_run: bool
    requeued: list[str]
    """The DLQ ids moved back to the main queue (with ``dry_run``: that would be)."""
    skipped: list[SkippedMessage] = []
    count: int = 0


class PurgeReport(msgspec.Struct, kw_only=True):
    queue: str
    purged: int
    """DLQ entries removed."""


class ClearReport(msgspec.Struct, kw_only=True):
    queue: str
    messages: int
    """Stream entries removed (waiting, pending and acknowledged history)."""
    delayed: int
    """Scheduled messages (delays, retries) removed."""
    dead_letters: int | None
    """DLQ entries removed (None: the DLQ was kept)."""


class CleanupReport(msgspec.Struct, kw_only=True):
    max_age_hours: float
    trimmed: dict[str, int]
    """Entries trimmed per stream (queues and DLQs), only those with some."""
    total: int
    errors: dict[str, str] = {}


class CancelReport(msgspec.Struct, kw_only=True):
    """What ``leanmq cancel`` / ``POST /cancel/{queue}/{id}`` did (``Queue.cancel``)."""

    queue: str
    id: str
    outcome: str  # a CancelOutcome value: cancelled, running, finished, not_found


class PendingMessage(msgspec.Struct, kw_only=True):
    id: str
    consumer: str
    idle_s: float
    deliveries: int


class ForceProcessReport(msgspec.Struct, kw_only=True):
    queue: str
    group: str
    dry_run: bool
    min_idle_s: float
    candidates: list[PendingMessage]
    """The stuck messages found (oldest first)."""
    redelivered: list[str] = []
    """Their ids (the old ones) now re-delivered as new entries."""
    skipped: list[SkippedMessage] = []


def _confirm(confirm: bool, what: str) -> None:
    if confirm is not True:
        raise ConfirmationRequiredError(f"{what} is destructive: pass confirm=True to proceed")


async def _dlq(mq: LeanMQ, queue: str) -> Queue:
    return await mq.get_dead_letter_queue(queue)


async def _main(mq: LeanMQ, queue: str) -> Queue:
    validate_queue_name(queue)
    if queue.endswith(DLQ_SUFFIX):
        raise ConfigurationError(
            f"{queue!r} is a dead-letter queue; name the main queue ({queue[: -len(DLQ_SUFFIX)]!r})"
        )
    return await mq.get_queue(queue)


# -- dead letters -------------------------------------------------------------------------


async def list_dead_letters(
    mq: LeanMQ, queue: str, count: int = 50, start: str = "-"
) -> list[Message[Any]]:
    """Up to ``count`` DLQ messages from ``start`` (oldest first), without consuming them.

    Each has ``dead_letter`` set: reason, error type, traceback, attempts, when it failed.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigurationError(f"count must be a positive integer, got {count!r}")
    if start != "-":
        (start,) = validate_ids([start])
    dlq = await _dlq(mq, queue)
    return await dlq.peek_messages(count, start)


async def get_dead_letter(mq: LeanMQ, queue: str, message_id: str) -> Message[Any] | None:
    """The DLQ message with stream id ``message_id``, or None."""
    (sid,) = validate_ids([message_id])
    dlq = await _dlq(mq, queue)
    found = await dlq.peek_messages(1, sid)
    return found[0] if found and found[0].id == sid else None


def _requeueable(fields: dict[bytes, bytes] | None) -> str | None:
    """Why a DLQ entry cannot be requeued, or None if it can (mirrors lua/requeue.lua)."""
    if not fields:
        return "not in the dead-letter queue"
    if any(not k.startswith(b"dlq.") and k not in (b"a", b"x", b"g") for k in fields):
        return None
    return "tombstone: the message was lost before it was dead-lettered (nothing to requeue)"


def _sort(entries: Iterable[RawEntry]) -> tuple[list[str], list[SkippedMessage]]:
    movable: list[str] = []
    skipped: list[SkippedMessage] = []
    for raw_id, fields in entries:
        sid = raw_id.decode()
        reason = _requeueable(fields)
        if reason is None:
            movable.append(sid)
        else:
            skipped.append(SkippedMessage(sid, reason))
    return movable, skipped


async def _requeue(dlq: Queue, ids: list[str]) -> tuple[list[str], list[SkippedMessage]]:
    """Requeue ``ids``; return those moved (checked when the count differs) and the rest."""
    if not ids:
        return [], []
    n = await dlq.requeue_messages(ids)
    if n == len(ids):
        return ids, []
    left = {raw_id.decode() for raw_id, _ in await dlq.mq.store.entries(dlq.stream, ids)}
    moved = [i for i in ids if i not in left]
    return moved, [SkippedMessage(i, "changed while requeuing; still in the DLQ") for i in left]


async def requeue_dead_letters(
    mq: LeanMQ,
    queue: str,
    ids: Sequence[str] | None = None,
    *,
    all_messages: bool = False,
    dry_run: bool = False,
) -> RequeueReport:
    """Move the DLQ messages ``ids`` (or ``all_messages``) back to the main queue.

    ``dry_run`` reports exactly which would move and which would be skipped (ids not in
    the DLQ; tombstones of lost messages, which have no content to requeue). "All" means
    the messages in the DLQ when the call starts, paged 500 at a time.
    """
    if (ids is None) == (not all_messages):
        raise ConfigurationError("pass either ids or all_messages=True (not both, not neither)")
    dlq = await _dlq(mq, queue)
    store = mq.store
    report = RequeueReport(queue=dlq.base_name, dry_run=dry_run, requeued=[])
    if ids is not None:
        wanted = list(dict.fromkeys(validate_ids(ids)))
        found = {raw_id.decode(): f for raw_id, f in await store.entries(dlq.stream, wanted)}
        movable, skipped = _sort((sid.encode(), found.get(sid)) for sid in wanted)
        report.skipped += skipped
        if dry_run:
            report.requeued = movable
        else:
            report.requeued, late = await _requeue(dlq, movable)
            report.skipped += late
    else:
        end = await store.last_id(dlq.stream)
        start = "-"
        while end is not None:
            page = await store.range(dlq.stream, start, end, _PAGE)
            if not page:
                break
            movable, skipped = _sort(page)
            report.skipped += skipped
            if dry_run:
                report.requeued += movable
            else:
                moved, late = await _requeue(dlq, movable)
                report.requeued += moved
                report.skipped += late
            if len(page) < _PAGE:
                break
            start = "(" + page[-1][0].decode()
    report.count = len(report.requeued)
    if not dry_run and report.count:
        mq.log.info("dlq_requeued", queue=dlq.base_name, count=report.count)
    return report


async def purge_dead_letters(mq: LeanMQ, queue: str, *, confirm: bool = False) -> PurgeReport:
    """Delete every message of a queue's DLQ (its consumer group is kept)."""
    _confirm(confirm, "purging a dead-letter queue")
    dlq = await _dlq(mq, queue)
    n = await dlq.purge()
    mq.log.info("dlq_purged", queue=dlq.base_name, count=n)
    return PurgeReport(queue=dlq.base_name, purged=n)


# -- main queues --------------------------------------------------------------------------


async def clear_queue(
    mq: LeanMQ, queue: str, *, include_dlq: bool = False, confirm: bool = False
) -> ClearReport:
    """Empty a queue: its stream (waiting, pending, history), delayed messages and expiry
    index, and with ``include_dlq`` its DLQ too; one MULTI, groups kept."""
    _confirm(confirm, "clearing a queue")
    q = await _main(mq, queue)
    messages, delayed, dead = await mq.store.clear_queue(q.keys, include_dlq)
    report = ClearReport(
        queue=q.name,
        messages=messages,
        delayed=delayed,
        dead_letters=dead if include_dlq else None,
    )
    mq.log.info(
        "queue_cleared", queue=q.name, messages=messages, delayed=delayed, dead_letters=dead
    )
    return report


async def cancel_message(mq: LeanMQ, queue: str, message_id: str) -> CancelReport:
    """Cancel one message of an existing main queue by id (see ``Queue.cancel``)."""
    q = await _main(mq, queue)
    outcome = await q.cancel(message_id)
    mq.log.info("cancel", queue=q.name, id=message_id, outcome=outcome.value)
    return CancelReport(queue=q.name, id=message_id, outcome=outcome.value)


async def cleanup(
    mq: LeanMQ, max_age_hours: float, *, queues: Iterable[str] | None = None
) -> CleanupReport:
    """Trim acknowledged history older than ``max_age_hours`` from every queue and DLQ.

    Only entries every consumer group has read and acknowledged go (``XTRIM MINID`` below
    each group's first unacknowledged entry, ``lua/trim.lua``): a
    waiting, pending or unread message is never removed. DLQ entries nobody consumed
    stay; review them with the DLQ tools.
    """
    if (
        isinstance(max_age_hours, bool)
        or not isinstance(max_age_hours, int | float)
        or not math.isfinite(max_age_hours)
        or max_age_hours < 0
    ):
        raise ConfigurationError(f"max_age_hours must be a number >= 0, got {max_age_hours!r}")
    if queues is None:
        names = await mq.store.registered_queues(mq.prefix)
    else:
        names = [validate_queue_name(n).removesuffix(DLQ_SUFFIX) for n in queues]
    age_ms = int(max_age_hours * 3_600_000)
    report = CleanupReport(max_age_hours=max_age_hours, trimmed={}, total=0)
    for base in dict.fromkeys(names):
        keys = QueueKeys(mq.prefix, base)
        for name, stream in ((base, keys.stream), (base + DLQ_SUFFIX, keys.dlq)):
            try:
                n = await mq.store.trim(stream, age_ms)
            except RedisOperationError as exc:  # a key of the wrong type: report, go on
                report.errors[name] = str(exc)
                continue
            if n:
                report.trimmed[name] = n
                report.total += n
    if report.total:
        mq.log.info("cleaned_up", trimmed=report.total, max_age_hours=max_age_hours)
    return report


async def force_process(
    mq: LeanMQ,
    queue: str,
    batch_size: int = 100,
    *,
    min_idle: float = 60.0,
    group: str | None = None,
    dry_run: bool = False,
) -> ForceProcessReport:
    """Re-deliver now up to ``batch_size`` messages stuck pending for ``min_idle`` seconds.

    See the module docstring. ``group`` defaults to the queue's consumer group.
    ``min_idle`` must exceed the time a live consumer may hold a message without
    renewing it (a worker renews its leases, so its lease, 30 s by default, is the bound).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
    if (
        isinstance(min_idle, bool)
        or not isinstance(min_idle, int | float)
        or not math.isfinite(min_idle)
        or min_idle < 0
    ):
        raise ConfigurationError(f"min_idle must be a number of seconds >= 0, got {min_idle!r}")
    q = await _main(mq, queue)
    group = group or q.consumer_group
    store = mq.store
    min_idle_ms = int(min_idle * 1000)
    rows = await store.pending_range(q.stream, group, batch_size, min_idle_ms)
    report = ForceProcessReport(
        queue=q.name,
        group=group,
        dry_run=dry_run,
        min_idle_s=min_idle,
        candidates=[
            PendingMessage(
                id=r["id"],
                consumer=r["consumer"],
                idle_s=r["idle_ms"] / 1000,
                deliveries=r["deliveries"],
            )
            for r in rows
        ],
    )
    if dry_run or not rows:
        return report
    consumer = _ADMIN_CONSUMER_PREFIX + make_consumer_name()
    ids = [r["id"] for r in rows]
    claimed = await store.claim(q.stream, group, consumer, min_idle_ms, ids)
    attempts: dict[str, int] = {}
    for raw_id, fields in claimed:
        try:
            attempts[raw_id.decode()] = int((fields or {}).get(b"a", b"0"))
        except ValueError:
            attempts[raw_id.decode()] = 0
    for sid in ids:
        if sid not in attempts:
            report.skipped.append(
                SkippedMessage(sid, "no longer stuck (acknowledged, renewed or deleted)")
            )
    outcomes = await store.redeliver(q.keys, group, consumer, list(attempts.items()))
    for sid, outcome in zip(attempts, outcomes, strict=True):
        if outcome == 1:
            report.redelivered.append(sid)
        elif outcome == 0:
            report.skipped.append(SkippedMessage(sid, "entry gone from the stream (acknowledged)"))
        elif outcome == 2:
            report.skipped.append(SkippedMessage(sid, "cancelled: a worker dead-letters it"))
        else:
            report.skipped.append(SkippedMessage(sid, "taken over by another consumer"))
    await store.delete_consumer_if_idle(q.stream, group, consumer)
    if report.redelivered:
        mq.log.info("force_processed", queue=q.name, group=group, count=len(report.redelivered))
    return report
