"""Handler results: storing a handler's return value, and awaiting it from any process.

A handler registered with ``@queue.handler(result_ttl=seconds)`` has its return value
stored when it succeeds, in the same atomic step as the acknowledgement
(``lua/store_result.lua``): an acknowledged message always has its result, and a message run
again (at-least-once) overwrites it. A message such a handler dead-letters gets a failure
record instead, written in one MULTI with the move to the DLQ (``lua/store_failure.lua``), so
waiters learn the DLQ reason. Both expire after ``result_ttl`` seconds.

Storage: the string key ``{prefix}{queue}:result:<message_id>`` (the queue's hash tag):
``b"j"`` or ``b"m"`` + the value encoded as JSON or msgpack (the client's serializer), or
``b"d"`` + a JSON failure record. Every store is announced on the pub/sub channel
``{prefix}results`` as ``<len(key)>:<key><record>`` (the record left out above
:data:`INLINE_MAX` bytes: a waiter then GETs it).

Waiting: :class:`~leanmq_async.result_hub.ResultHub` (one per client; every waiter of a
process shares one pub/sub connection, so 200 concurrent waiters cost one connection).

An unencodable (or too large) return value dead-letters the message with
``error_type="MessageEncodeError"``: the waiter raises :class:`DeadLetteredError` saying
why, and the message can be requeued from the DLQ once the handler is fixed.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from leanmq_async.connection import translate_errors
from leanmq_async.envelope import decode_entry, encode_model, payload_decoder
from leanmq_async.exceptions import ConfigurationError, DeadLetteredError, MessageDecodeError
from leanmq_async.keys import results_channel
from leanmq_async.priority import split_id
from leanmq_async.replies import parse_store_failure, parse_store_result
from leanmq_async.result_hub import ResultHub
from leanmq_async.store_types import SettleCall
from leanmq_async.validation import to_ms

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.queue import Queue
    from leanmq_async.registration import Handler
    from leanmq_async.worker.settler import Settler

__all__ = [
    "INLINE_MAX",
    "call",
    "dead_letter_step",
    "get_result",
    "message_id_of",
    "store_result",
]

INLINE_MAX = 4096
"""Records up to this size travel in the announcement itself (no GET round trip)."""


_OK_JSON, _OK_MSGPACK, _DEAD = b"j", b"m", b"d"

_JSON = msgspec.json.Encoder(enc_hook=encode_model)
_MSGPACK = msgspec.msgpack.Encoder(enc_hook=encode_model)


class _Failure(msgspec.Struct, omit_defaults=True):
    reason: str
    error_type: str = ""
    attempts: int = 0
    queue: str = ""
    id: str = ""


_FAILURE = msgspec.json.Decoder(_Failure)


# -- worker side ------------------------------------------------------------------------


def _encode_value(mq: LeanMQ, value: Any) -> bytes:
    """The stored record of a return value; TypeError/ValueError saying why not."""
    msgpack = mq.codec.name == "msgpack"
    try:
        body = (_MSGPACK if msgpack else _JSON).encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"the handler's return value of type {type(value).__name__} cannot be encoded "
            f"as {mq.codec.name} ({exc}); return JSON-compatible values, msgspec Structs, "
            "dataclasses or pydantic models"
        ) from exc
    record = (_OK_MSGPACK if msgpack else _OK_JSON) + body
    if len(record) > mq.codec.max_message_size:
        raise ValueError(
            f"the handler's return value is {len(record)} bytes encoded, over "
            f"max_message_size={mq.codec.max_message_size}"
        )
    return record


def _hub(mq: LeanMQ) -> ResultHub:
    hub = mq._results
    if hub is None:
        hub = mq._results = ResultHub(mq)
    return hub


async def store_result(
    settler: Settler, sid: str, message_id: str, value: Any, attempt: int, ttl: float
) -> bool:
    """Store a succeeded handler's ``value`` and ack its entry in one step (``settler``'s).

    False when the value could not be encoded: the entry was dead-lettered instead
    (``MessageEncodeError``). True otherwise, also when Redis stayed unreachable for
    ``settle_timeout`` (the entry then stays pending, is reclaimed and runs again).
    """
    queue = settler.queue
    try:
        record = _encode_value(queue.mq, value)
    except (TypeError, ValueError) as exc:
        await settler.dead_letter(
            sid, str(exc), "MessageEncodeError", attempts=attempt, message_id=message_id
        )
        return False
    hub = _hub(queue.mq)
    raw, level = split_id(sid)  # an entry of a priority level: its own stream (priority.py)
    keys = [queue.keys.at(level).stream, queue.keys.result(message_id)]
    args: list[Any] = [settler.group, raw, record, to_ms(ttl, "result_ttl"), hub.channel]
    args.append(INLINE_MAX)
    # One call of the settler's batches: results stored together share a round trip.
    script = settler.store.scripts.store_result
    await settler.run_call(SettleCall(script, keys, args, parse_store_result))
    return True


def message_id_of(handler: Handler, fields: Mapping[bytes, bytes] | None, max_size: int) -> str:
    """The ``message_id`` of an entry not decoded yet, for a result handler ('' otherwise,
    or when the entry cannot be decoded)."""
    if handler.options.result_ttl is None:
        return ""
    try:
        return decode_entry(fields, max_size).message_id
    except MessageDecodeError:
        return ""


def dead_letter_step(
    settler: Settler,
    call: SettleCall,
    ttl: float,
    failure: tuple[str, str, str, int],
) -> Callable[[], Awaitable[int]]:
    """The settling step dead-lettering an entry of a result handler: the dead_letter.lua
    ``call`` preceded, in one MULTI, by ``store_failure.lua`` (same ownership test).

    ``failure``: the message id, the DLQ reason, error type and attempts.
    """
    queue = settler.queue
    message_id, reason, error_type, attempts = failure
    record = _DEAD + _JSON.encode(_Failure(reason, error_type, attempts, queue.name, message_id))
    sid = str(call.args[4])
    store_args: list[Any] = [settler.group, settler.consumer, sid, record, to_ms(ttl, "result_ttl")]
    store_args += [results_channel(queue.mq.prefix), INLINE_MAX]
    # EVAL, not EVALSHA: inside MULTI a NOSCRIPT would fail one script and run the other.
    store_failure_text: Any = settler.store.scripts.store_failure.script
    dead_letter_text: Any = call.script.script

    async def step() -> int:
        client = settler.store.client
        with translate_errors("move to DLQ"):
            async with client.pipeline(transaction=True) as pipe:
                result_key = queue.keys.result(message_id)
                # call.keys[0]: the entry's stream (a priority level's, see priority.py).
                pipe.eval(store_failure_text, 2, call.keys[0], result_key, *store_args)
                pipe.eval(dead_letter_text, len(call.keys), *call.keys, *call.args)
                stored, reply = await pipe.execute()
        parse_store_failure(stored)
        return call.parse(reply)

    return step


# -- producer side ----------------------------------------------------------------------


def decode_record(record: bytes, result_type: Any, message_id: str) -> Any:
    """The value of a stored record, or :class:`DeadLetteredError`."""
    kind, body = record[:1], record[1:]
    if kind == _DEAD:
        failure = _FAILURE.decode(body)
        raise DeadLetteredError(
            f"message {message_id!r} of queue {failure.queue!r} was dead-lettered "
            f"({failure.error_type or 'no error type'}): {failure.reason}",
            reason=failure.reason,
            error_type=failure.error_type,
            attempts=failure.attempts,
            message_id=message_id,
            queue=failure.queue,
        )
    if kind not in (_OK_JSON, _OK_MSGPACK):
        raise MessageDecodeError(f"result of message {message_id!r} is not a stored result")
    try:
        return payload_decoder(result_type, kind == _OK_MSGPACK).decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MessageDecodeError(
            f"result of message {message_id!r} does not decode as {result_type!r}: {exc}"
        ) from exc


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None:
        to_ms(timeout, "timeout")


async def get_result(
    queues: Sequence[Queue[Any]], message_id: str, limit: float | None, result_type: Any
) -> Any:
    """Wait for the result of ``message_id`` stored on any of ``queues``."""
    if not isinstance(message_id, str) or not message_id:
        raise ConfigurationError(
            f"message_id must be the message's non-empty message_id, got {message_id!r}"
        )
    _check_timeout(limit)
    hub = _hub(queues[0].mq)
    try:
        record = await hub.wait([q.keys.result(message_id) for q in queues], limit)
    except TimeoutError:
        raise TimeoutError(
            f"no result for message {message_id!r} within {limit}s (is its handler "
            "registered with result_ttl=? the message itself is still handled)"
        ) from None
    return decode_record(record, result_type, message_id)


async def call(
    queue: Queue[Any],
    send: Callable[[str], Awaitable[str]],
    message_id: str | None,
    limit: float | None,
    result_type: Any,
) -> Any:
    """Subscribe, register, ``send(message_id)``, then wait (``limit`` s) for the result."""
    _check_timeout(limit)
    mid = message_id if message_id is not None else str(uuid.uuid4())
    hub = _hub(queue.mq)
    deadline = anyio.current_time() + (limit if limit is not None else float("inf"))
    # Registered and subscribed before the send: the result cannot be missed, no GET needed.
    waiter = hub.register([queue.keys.result(mid)], check=False)
    try:
        try:
            await hub.subscribed(limit)
        except TimeoutError:
            raise TimeoutError(f"could not subscribe to results within {limit}s") from None
        await send(mid)
        try:
            record = await hub.wait_for(waiter, deadline - anyio.current_time())
        except TimeoutError:
            raise TimeoutError(
                f"no result for message {mid!r} within {limit}s (is its handler registered "
                "with result_ttl=? the message itself is still handled; "
                f"await queue.get_result({mid!r}) waits on)"
            ) from None
    finally:
        hub.unregister(waiter)
    return decode_record(record, result_type, mid)
