"""A queue (or dead-letter queue): LeanMQ's queue API, async."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from leanmq_async.exceptions import (
    ConfigurationError,
    WrongQueueKindError,
)
from leanmq_async.idempotency import dedup_window_ms, per_item_ids
from leanmq_async.keys import DLQ_SUFFIX, QueueKeys, cancel_channel, default_group
from leanmq_async.message import CancelOutcome, DeadLetterResult, Message, QueueInfo
from leanmq_async.priority import level_of
from leanmq_async.queue_read import info_from, peek_messages, read_messages
from leanmq_async.registration import (
    HandlerFunc,
    HandlerKwargs,
    HandlerOptions,
    register_handler,
)
from leanmq_async.store import SendOp
from leanmq_async.validation import check_ttl_and_delay, validate_ids
from leanmq_async.validation import to_ms as to_ms

if TYPE_CHECKING:
    from typing import Unpack

    from typing_extensions import TypeVar as DefaultTypeVar

    from leanmq_async.client import LeanMQ
    from leanmq_async.cluster import Durability

    # A bare `Queue` means `Queue[Any]` (PEP 696 default; typing has it from 3.13 only).
    PayloadT = DefaultTypeVar("PayloadT", default=Any)
else:
    PayloadT = TypeVar("PayloadT")

__all__ = ["Queue"]


F = TypeVar("F", bound="HandlerFunc")

CANCEL_MARKER_SECONDS = 86_400
"""How long a cancel marker of a running message is kept (a group that reads it later
dead-letters it unrun while the marker lives; see README "Cancellation")."""


class Queue(Generic[PayloadT]):
    """One Redis stream: a main queue, or the dead-letter queue of one.

    Obtain queues from :class:`~leanmq_async.LeanMQ` (``create_queue_pair``, ``get_queue``,
    ``queue``); constructing one does no I/O. ``Queue[Order]`` (from
    ``mq.queue("orders", payload_type=Order)``) reads messages decoded and validated as
    ``Order`` and checks its handlers' annotations against it; a bare ``Queue`` is
    ``Queue[Any]``. A dead-letter queue is untyped (``Queue[Any]``).
    """

    def __init__(
        self, mq: LeanMQ, base_name: str, *, is_dlq: bool = False, payload_type: Any = Any
    ) -> None:
        self._mq = mq
        self.payload_type: Any = payload_type
        self.base_name = base_name
        self.is_dlq = is_dlq
        self.keys = QueueKeys(mq.prefix, base_name)
        self.name = base_name + DLQ_SUFFIX if is_dlq else base_name
        self.stream = self.keys.dlq if is_dlq else self.keys.stream
        self.consumer_group = default_group(base_name) + ("-dlq" if is_dlq else "")

    def __repr__(self) -> str:
        kind = "dead-letter queue" if self.is_dlq else "queue"
        return f"<Queue {self.name!r} ({kind}) stream={self.stream!r}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Queue)
            and other.stream == self.stream
            and other._mq.prefix == self._mq.prefix
        )

    def __hash__(self) -> int:
        return hash((self.stream, self._mq.prefix))

    @property
    def mq(self) -> LeanMQ:
        """The client this queue belongs to."""
        return self._mq

    def dead_letter_queue(self) -> Queue[Any]:
        """This queue's dead-letter queue (no I/O)."""
        self._require_main("dead_letter_queue()")
        return self._mq._queue_object(self.base_name, is_dlq=True)

    def main_queue(self) -> Queue[Any]:
        """The main queue of this queue pair (no I/O)."""
        return self._mq._queue_object(self.base_name, is_dlq=False)

    def _require_main(self, what: str) -> None:
        if self.is_dlq:
            raise WrongQueueKindError(
                f"{what} needs a main queue, but {self.name!r} is a dead-letter queue; "
                f"use mq.queue({self.base_name!r})"
            )

    # -- sending -------------------------------------------------------------------------

    def _send_op(
        self,
        data: PayloadT,
        message_id: str | None,
        ttl: float | None,
        delay: float | None,
        headers: Mapping[str, str] | None,
        dedup_window: float | None = None,
        priority: int | str | None = None,
    ) -> tuple[SendOp, str]:
        self._require_main("sending")
        keys = self.keys if priority is None else self.keys.at(level_of(priority))
        if self._mq.header_providers:
            headers = self._provided_headers(headers)
        codec = self._mq.codec
        mid, body = codec.encode(data, message_id, headers, self.payload_type)
        ttl_ms, delay_ms = check_ttl_and_delay(ttl, delay)
        member = f"{mid}|{uuid.uuid4().hex}" if delay_ms else ""
        # Only an explicit message_id is deduplicated (a generated one is unique anyway).
        dedup_ms = 0
        if message_id is not None:
            window = self._mq.dedup_window if dedup_window is None else dedup_window
            dedup_ms = dedup_window_ms(window)
        elif dedup_window is not None:
            dedup_window_ms(dedup_window)  # still refuse a bad value
        op = SendOp(keys, codec.field, body, ttl_ms, delay_ms, member, mid, dedup_ms)
        return op, mid

    def _provided_headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        merged: dict[str, str] = {}
        for provider in self._mq.header_providers:
            extra = provider(self)
            if extra:
                merged.update(extra)
        if headers:
            merged.update(headers)
        return merged

    async def send_message(
        self,
        data: PayloadT,
        message_id: str | None = None,
        ttl: float | None = None,
        *,
        delay: float | None = None,
        headers: Mapping[str, str] | None = None,
        durability: Durability | None = None,
        dedup_window: float | None = None,
        priority: int | str | None = None,
    ) -> str:
        """Send one message; return its stream id.

        ``ttl``: seconds until it expires unhandled. ``delay``: seconds before it becomes
        visible (then the return value is the schedule handle, not yet a stream id).
        ``durability``: wait for replicas like this for this call (default: the client's).
        ``message_id``: a send of an id sent to this queue less than ``dedup_window``
        seconds ago (default: the client's, 300) writes nothing and returns the first
        send's id, so retrying a failed send with the same id is safe; 0: no dedup.
        ``priority``: 0/"low", 1/"normal" (default) or 2/"high" (:class:`Priority`): a
        worker takes higher levels first (see README "Priorities").
        """
        op, _ = self._send_op(data, message_id, ttl, delay, headers, dedup_window, priority)
        if durability is not None:
            durability.check(self._mq.connection_settings)
        if not op.ttl_ms and not op.delay_ms and not op.dedup_ms and op.keys is self.keys:
            return await self._mq.store.xadd(self.stream, op.field, op.body, durability)
        (sid,) = await self._mq.store.send([op], durability)
        return sid

    async def send_messages(
        self,
        items: Iterable[PayloadT],
        *,
        ttl: float | None = None,
        delay: float | None = None,
        headers: Mapping[str, str] | None = None,
        durability: Durability | None = None,
        message_ids: Sequence[str | None] | None = None,
        dedup_window: float | None = None,
        priority: int | str | None = None,
    ) -> list[str]:
        """Send many messages in one round trip, atomically; return their stream ids.

        ``durability``: wait for replicas like this for this call (default: the client's).
        ``priority``: the level of every message, as ``send_message``'s.
        ``message_ids``: one per item (None: generated), deduplicated like
        ``send_message``'s (an id twice in one call: the second returns the first's id).
        """
        if isinstance(items, str | bytes | bytearray | Mapping):
            raise ConfigurationError(
                f"send_messages takes an iterable of payloads, not a single "
                f"{type(items).__name__}: send_messages([data]) or send_message(data)"
            )
        payloads = list(items)
        mids = per_item_ids(message_ids, len(payloads))
        ops = [
            self._send_op(data, mid, ttl, delay, headers, dedup_window, priority)[0]
            for data, mid in zip(payloads, mids, strict=True)
        ]
        if not ops:
            return []
        if durability is not None:
            durability.check(self._mq.connection_settings)
        return await self._mq.store.send(ops, durability)

    # -- results (issue 17; logic in leanmq_async/results.py) ------------------------------

    async def call(
        self,
        data: PayloadT,
        *,
        timeout: float | None = 30.0,  # noqa: ASYNC109 - the result's deadline (API)
        result_type: Any = Any,
        message_id: str | None = None,
        ttl: float | None = None,
        delay: float | None = None,
        headers: Mapping[str, str] | None = None,
        durability: Durability | None = None,
        priority: int | str | None = None,
    ) -> Any:
        """Send ``data`` and wait for its handler's return value (request/response).

        The handler must be registered with ``result_ttl=`` (see :mod:`leanmq_async.results`).
        ``result_type`` decodes and validates the value (default: JSON types). Raises
        :class:`~leanmq_async.DeadLetteredError` if the message is dead-lettered, and
        ``TimeoutError`` after ``timeout`` seconds (None: no limit); the message is still
        handled then (:meth:`get_result` waits on). ``message_id``: the id to send with
        (default: a new uuid); the other keywords are those of :meth:`send_message`.
        """
        from leanmq_async import results

        async def send(mid: str) -> str:
            return await self.send_message(
                data,
                mid,
                ttl,
                delay=delay,
                headers=headers,
                durability=durability,
                priority=priority,
            )

        self._require_main("call()")
        return await results.call(self, send, message_id, timeout, result_type)

    async def get_result(
        self,
        message_id: str,
        *,
        timeout: float | None = 30.0,  # noqa: ASYNC109 - the result's deadline (API)
        result_type: Any = Any,
    ) -> Any:
        """Wait for the stored result of the message ``message_id`` (its ``message_id``,
        not its stream id), from any process; returns at once if it is stored already.

        Raises like :meth:`call`. A result is kept ``result_ttl`` seconds after it is stored.
        """
        from leanmq_async import results

        self._require_main("get_result()")
        return await results.get_result([self], message_id, timeout, result_type)

    # -- reading -------------------------------------------------------------------------

    async def get_messages(
        self,
        count: int = 1,
        block_for_seconds: float | None = None,
        consumer_id: str | None = None,
    ) -> list[Message[PayloadT]]:
        """Read up to ``count`` new messages for this queue's consumer group.

        Blocks up to ``block_for_seconds`` when none are waiting (None: do not block).
        Due delayed messages are moved into the queue by the read itself (no worker
        needed); a blocking read wakes when one comes due.
        Messages stay pending until acknowledged, deleted or moved to the DLQ. Entries that
        cannot be decoded are moved to the DLQ with their reason; expired ones are
        acknowledged and not returned. A read that yields only such entries is followed
        by another, so an empty result means no message was waiting (or the wait ended).
        """
        return await read_messages(self, count, block_for_seconds, consumer_id)

    async def peek_messages(self, count: int = 10, start: str = "-") -> list[Message[PayloadT]]:
        """Read up to ``count`` entries from ``start`` without consuming them (XRANGE)."""
        return await peek_messages(self, count, start)

    # -- settling ------------------------------------------------------------------------

    async def acknowledge_messages(self, message_ids: Sequence[str]) -> int:
        """Mark messages as processed (they stay in the stream as history); return count."""
        ids = validate_ids(message_ids)
        if not ids:
            return 0
        return await self._mq.store.ack(self.stream, self.consumer_group, ids)

    async def delete_messages(self, message_ids: Sequence[str]) -> int:
        """Acknowledge and remove messages from the stream; return the number removed."""
        ids = validate_ids(message_ids)
        if not ids:
            return 0
        return await self._mq.store.delete_messages(
            self.keys, self.stream, self.consumer_group, ids
        )

    async def move_to_dlq(
        self, message_ids: Sequence[str], reason: str, dlq: Queue | None = None
    ) -> DeadLetterResult:
        """Move messages pending in this queue's group to the DLQ with ``reason``.

        Each move is atomic (copy + ack in one script). Only delivered, unacknowledged
        messages move: an id never delivered or already acknowledged stays where it is.
        The result lists the ids moved and, for the others, why not (``len(result)`` is
        the number moved).
        """
        self._require_main("move_to_dlq")
        if not isinstance(reason, str):
            raise ConfigurationError(
                f"reason must be a str saying why the messages are dead-lettered, got "
                f"{type(reason).__name__}: move_to_dlq(ids, str(reason))"
            )
        if dlq is not None and (not dlq.is_dlq or dlq.base_name != self.base_name):
            raise WrongQueueKindError(
                "move_to_dlq needs this queue's dead-letter queue "
                f"({self.base_name + DLQ_SUFFIX!r}), got {dlq.name!r}"
            )
        ids = list(dict.fromkeys(validate_ids(message_ids)))  # each id once
        if not ids:
            return DeadLetterResult()
        items = [(sid, reason, "", "", 0) for sid in ids]
        return await self._mq.store.dead_letter(
            self.keys, self.consumer_group, "", self.name, items
        )

    async def cancel(self, message_id: str) -> CancelOutcome:
        """Cancel one message by the id its send returned (or an idempotent send's
        ``message_id``), at any priority level (``<stream id>:p2`` names a high one): see
        :class:`~leanmq_async.CancelOutcome` and README "Cancellation".

        One atomic script: a message no worker started never runs (dead-lettered with
        reason ``"cancelled"``); a running one is cancelled in its handler by its worker.
        """
        self._require_main("cancel")
        if not isinstance(message_id, str) or not message_id:
            raise ConfigurationError(
                f"cancel needs the id a send returned (a non-empty str), got {message_id!r}"
            )
        outcome, _ = await self._mq.store.cancel(
            self.keys,
            self.name,
            message_id,
            CANCEL_MARKER_SECONDS * 1000,
            cancel_channel(self._mq.prefix),
        )
        return outcome

    async def requeue_messages(
        self, message_ids: Sequence[str], destination_queue: Queue | None = None
    ) -> int:
        """Move messages from this DLQ back to its main queue atomically; return count."""
        if not self.is_dlq:
            raise WrongQueueKindError(
                f"requeue_messages is called on a dead-letter queue, not on {self.name!r}: "
                f"use (await mq.get_dead_letter_queue({self.base_name!r})).requeue_messages(...)"
            )
        if destination_queue is not None and (
            destination_queue.is_dlq or destination_queue.base_name != self.base_name
        ):
            raise WrongQueueKindError(
                f"messages of {self.name!r} can only be requeued to {self.base_name!r}, "
                f"not to {destination_queue.name!r}"
            )
        ids = validate_ids(message_ids)
        if not ids:
            return 0
        return await self._mq.store.requeue(self.keys, self.consumer_group, ids)

    async def purge(self) -> int:
        """Remove every message (a main queue's delayed ones and priority levels too); return
        how many entries."""
        store = self._mq.store
        n = await store.purge(self.keys, self.stream, include_delayed=not self.is_dlq)
        if not self.is_dlq and await store.levels_in_use(self.keys):
            for keys in self.keys.levels():
                if keys.level != self.keys.level:
                    n += await store.purge(keys, keys.stream, include_delayed=True)
        return n

    async def get_info(self) -> QueueInfo:
        """Length, pending count, groups and creation time of this queue (one round trip)."""
        (info,) = await self._mq.store.stream_infos([(self.stream, self.keys)], levels=True)
        return info_from(self, info)

    # -- worker --------------------------------------------------------------------------

    @overload
    def handler(self, func: F, /) -> F: ...

    @overload
    def handler(
        self, func: None = None, /, **options: Unpack[HandlerKwargs]
    ) -> Callable[[F], F]: ...

    def handler(
        self, func: F | None = None, /, **options: Unpack[HandlerKwargs]
    ) -> F | Callable[[F], F]:
        """Register a coroutine function as this queue's handler (no I/O).

        Use bare (``@queue.handler``) or with options (``@queue.handler(concurrency=50,
        max_retries=5, timeout=30, group="billing")``); see :class:`HandlerOptions`.
        """
        self._require_main("handler")

        def decorate(f: F) -> F:
            register_handler(self, f, options)
            return f

        return decorate(func) if func is not None else decorate

    def handler_options(self) -> list[HandlerOptions]:
        """The options of the handlers registered on this queue."""
        return [h.options for h in self._mq.handlers if h.queue == self]
