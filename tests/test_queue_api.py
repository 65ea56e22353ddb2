"""The Queue API against a real Redis: send, read, settle, DLQ, TTL, delay, bad input."""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from leanmq_async import (
    ConfigurationError,
    DeadLetterInfo,
    InvalidMessageIdError,
    LeanMQ,
    Message,
    MessageEncodeError,
    MessageTooLargeError,
    Queue,
    QueueNotFoundError,
    RedisOperationError,
    WrongQueueKindError,
)
from leanmq_async.testing import RedisServer

pytestmark = pytest.mark.anyio


async def redis_ms(raw: aioredis.Redis) -> float:
    sec, usec = await raw.time()
    return sec * 1000 + usec / 1000


async def pending_ids(raw: aioredis.Redis, queue: Queue) -> list[str]:
    rows = await raw.xpending_range(queue.stream, queue.consumer_group, "-", "+", 1000)
    return [r["message_id"].decode() for r in rows]


@pytest.fixture
async def pair(mq: LeanMQ) -> tuple[Queue, Queue]:
    return await mq.create_queue_pair("orders")


# -- send and read -----------------------------------------------------------------------


async def test_send_and_get(pair: tuple[Queue, Queue], mq: LeanMQ) -> None:
    queue, _ = pair
    before = time.time()
    sid = await queue.send_message({"order": 1}, message_id="order-1", headers={"trace": "t1"})
    other = await queue.send_message([1, "two", None])
    assert tuple(map(int, sid.split("-"))) < tuple(map(int, other.split("-")))
    msgs = await queue.get_messages(count=10)
    assert [m.data for m in msgs] == [{"order": 1}, [1, "two", None]]
    first = msgs[0]
    assert isinstance(first, Message)
    assert first.id == sid
    assert first.message_id == "order-1"
    assert first.headers == {"trace": "t1"}
    assert first.delivery_count == 1
    assert first.attempt == 1
    assert first.queue == "orders"
    assert first.expires_at is None
    assert first.dead_letter is None
    assert before - 1 <= first.timestamp <= time.time() + 1
    assert msgs[1].headers == {}
    # The default message id is a fresh uuid.
    assert len(msgs[1].message_id) == 36 and msgs[1].message_id != first.message_id
    # Read messages are pending, and not delivered twice.
    assert await queue.get_messages(count=10) == []
    assert (await queue.get_info()).pending_messages == 2


async def test_get_messages_count(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    await queue.send_messages(range(7))
    assert [m.data for m in await queue.get_messages()] == [0]
    assert [m.data for m in await queue.get_messages(count=3)] == [1, 2, 3]
    assert [m.data for m in await queue.get_messages(count=100)] == [4, 5, 6]
    assert await queue.get_messages(count=100) == []


async def test_send_messages(pair: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, _ = pair
    assert await queue.send_messages([]) == []
    ids = await queue.send_messages(({"n": i} for i in range(5)), headers={"batch": "1"})
    assert len(ids) == len(set(ids)) == 5
    msgs = await queue.get_messages(count=10)
    assert [m.id for m in msgs] == ids
    assert [m.data for m in msgs] == [{"n": i} for i in range(5)]
    assert all(m.headers == {"batch": "1"} for m in msgs)
    assert len({m.message_id for m in msgs}) == 5
    ttl_ids = await queue.send_messages(["a", "b"], ttl=30)
    assert await raw.zcard(queue.keys.expiry) == 2
    assert {m.id for m in await queue.get_messages(count=5)} == set(ttl_ids)


async def test_send_messages_is_all_or_nothing(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    with pytest.raises(MessageEncodeError):
        await queue.send_messages([1, 2, object(), 4])
    assert (await queue.get_info()).message_count == 0


@pytest.mark.parametrize("single", ["abc", b"abc", {"a": 1}])
async def test_send_messages_refuses_a_single_payload(
    pair: tuple[Queue, Queue], single: Any
) -> None:
    queue, _ = pair
    with pytest.raises(ConfigurationError, match="iterable"):
        await queue.send_messages(single)
    assert (await queue.get_info()).message_count == 0


async def test_struct_payload(pair: tuple[Queue, Queue]) -> None:
    class Item(msgspec.Struct):
        sku: str
        qty: int = 1

    queue, _ = pair
    await queue.send_message(Item(sku="x-1", qty=3))
    await queue.send_messages([Item(sku="y"), {"plain": "dict"}])
    msgs = await queue.get_messages(count=5)
    assert [m.data for m in msgs] == [
        {"sku": "x-1", "qty": 3},
        {"sku": "y", "qty": 1},
        {"plain": "dict"},
    ]
    assert msgspec.convert(msgs[0].data, Item) == Item(sku="x-1", qty=3)


async def test_msgpack_client_reads_and_writes(redis_server: RedisServer, prefix: str) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix, serializer="msgpack") as mq:
        queue, dlq = await mq.create_queue_pair("packed")
        await queue.send_message({"b": b"\x01\x02"}, ttl=30, headers={"h": "v"})
        await queue.send_messages([1, 2.5])
        msgs = await queue.get_messages(count=5)
        assert [m.data for m in msgs] == [{"b": b"\x01\x02"}, 1, 2.5]
        assert msgs[0].headers == {"h": "v"} and msgs[0].expires_at is not None
        await queue.move_to_dlq([msgs[0].id], "check")
        (dead,) = await dlq.get_messages()
        assert dead.data == {"b": b"\x01\x02"}


async def test_unencodable_payload(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    with pytest.raises(MessageEncodeError, match="object"):
        await queue.send_message(object())
    with pytest.raises(MessageEncodeError):
        await queue.send_message({"set": {1, 2}, "f": lambda: 0})
    with pytest.raises(MessageEncodeError, match="headers"):
        await queue.send_message(1, headers={"n": 1})  # type: ignore[dict-item]
    assert (await queue.get_info()).message_count == 0


async def test_size_limit(redis_server: RedisServer, prefix: str, raw: aioredis.Redis) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix, max_message_size=300) as mq:
        assert mq.codec.max_message_size == 300
        queue, _ = await mq.create_queue_pair("small")
        await queue.send_message("x" * 100)
        with pytest.raises(MessageTooLargeError, match="max_message_size=300"):
            await queue.send_message("x" * 300)
        with pytest.raises(MessageTooLargeError):
            await queue.send_message("x" * 300, ttl=5)
        with pytest.raises(MessageTooLargeError):
            await queue.send_messages(["ok", "x" * 300])
        assert await raw.xlen(queue.stream) == 1
        assert await raw.zcard(queue.keys.expiry) == 0


async def test_default_size_limit_is_one_mebibyte(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    await queue.send_message("x" * 1_000_000)
    with pytest.raises(MessageTooLargeError):
        await queue.send_message("x" * 1_048_576)
    assert (await queue.get_info()).message_count == 1
    (big,) = await queue.get_messages()
    assert len(big.data) == 1_000_000


async def test_reader_with_a_smaller_limit_dead_letters_big_entries(
    redis_server: RedisServer, prefix: str
) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix) as big:
        queue, _ = await big.create_queue_pair("sizes")
        await queue.send_messages(["x" * 5000, "small"])
    async with LeanMQ(redis_server.url, prefix=prefix, max_message_size=1000) as small:
        queue = await small.get_queue("sizes")
        assert [m.data for m in await queue.get_messages(count=5)] == ["small"]
        (dead,) = await queue.dead_letter_queue().peek_messages()
        assert dead.dead_letter is not None
        assert "max_message_size=1000" in dead.dead_letter.reason


# -- blocking reads ------------------------------------------------------------------------


async def test_block_times_out_empty(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    assert await queue.get_messages(block_for_seconds=0.1) == []
    assert await queue.get_messages(count=5, block_for_seconds=0.05) == []


async def test_block_wakes_when_another_task_sends(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    got: list[Message[Any]] = []

    async def reader() -> None:
        got.extend(await queue.get_messages(count=5, block_for_seconds=30))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.sleep(0.1)
        assert got == []
        await queue.send_message({"wake": "up"})
    assert [m.data for m in got] == [{"wake": "up"}]


async def test_block_returns_waiting_messages_at_once(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    await queue.send_message(1)
    # A message already waiting is returned by a blocking read like by a plain one.
    assert [m.data for m in await queue.get_messages(block_for_seconds=30)] == [1]


async def test_block_does_not_return_early_for_filtered_entries(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await raw.xadd(queue.stream, {"junk": "1"})
    got: list[Message[Any]] = []

    async def reader() -> None:
        got.extend(await queue.get_messages(block_for_seconds=30))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.sleep(0.1)
        await queue.send_message("real")
    assert [m.data for m in got] == ["real"]
    assert (await dlq.get_info()).message_count == 1


@pytest.mark.parametrize("block", [-1, "1", float("nan")])
async def test_bad_block_for_seconds(pair: tuple[Queue, Queue], block: Any) -> None:
    queue, _ = pair
    with pytest.raises(ConfigurationError, match="block_for_seconds"):
        await queue.get_messages(block_for_seconds=block)


async def test_block_zero_does_not_block(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    # BLOCK 0 would wait forever in Redis: 0 must mean "do not block" (a hang here ends
    # in the pytest timeout).
    assert await queue.get_messages(block_for_seconds=0) == []


# -- settling ------------------------------------------------------------------------------


async def test_acknowledge(pair: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, _ = pair
    await queue.send_messages([1, 2, 3])
    msgs = await queue.get_messages(count=3)
    assert await queue.acknowledge_messages([m.id for m in msgs[:2]]) == 2
    assert await pending_ids(raw, queue) == [msgs[2].id]
    assert await queue.acknowledge_messages([msgs[0].id]) == 0  # already acked
    assert await queue.acknowledge_messages([]) == 0
    as_bytes = [m.id.encode() for m in msgs[2:]]  # bytes ids are accepted too
    assert await queue.acknowledge_messages(as_bytes) == 1  # type: ignore[arg-type]
    # Acknowledged messages stay in the stream as history.
    assert (await queue.get_info()).message_count == 3


async def test_delete_messages(pair: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, _ = pair
    await queue.send_messages([1, 2], ttl=60)
    await queue.send_message(3)
    msgs = await queue.get_messages(count=3)
    assert await queue.delete_messages([msgs[0].id, msgs[2].id]) == 2
    assert [m.data for m in await queue.peek_messages()] == [2]
    assert await pending_ids(raw, queue) == [msgs[1].id]
    assert await raw.zrange(queue.keys.expiry, 0, -1) == [msgs[1].id.encode()]
    assert await queue.delete_messages([msgs[0].id]) == 0
    assert await queue.delete_messages([]) == 0


async def test_move_to_dlq(pair: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, dlq = pair
    await queue.send_message({"bad": 1}, message_id="mid-1", headers={"h": "1"})
    await queue.send_message({"good": 2})
    bad, good = await queue.get_messages(count=2)
    assert (await queue.move_to_dlq([bad.id], "invalid order", dlq)).moved == [bad.id]
    assert await pending_ids(raw, queue) == [good.id]
    (dead,) = await dlq.get_messages()
    assert dead.data == {"bad": 1}
    assert dead.message_id == "mid-1"
    assert dead.headers == {"h": "1"}
    assert dead.queue == "orders:dlq"
    info = dead.dead_letter
    assert isinstance(info, DeadLetterInfo)
    assert info.reason == "invalid order"
    assert info.source_queue == "orders"
    assert info.source_id == bad.id
    assert info.group == "orders-group"
    assert info.error_type == "" and info.traceback == "" and info.attempts == 0
    assert abs(info.failed_at * 1000 - await redis_ms(raw)) < 60_000
    # The DLQ is a queue too: its messages are pending in its own group.
    assert (await dlq.get_info()).pending_messages == 1
    assert await dlq.acknowledge_messages([dead.id]) == 1


async def test_move_to_dlq_without_dlq_argument(pair: tuple[Queue, Queue]) -> None:
    queue, dlq = pair
    await queue.send_messages([1, 2, 3])
    msgs = await queue.get_messages(count=3)
    assert len(await queue.move_to_dlq([m.id for m in msgs], "all")) == 3
    assert [m.data for m in await dlq.get_messages(count=5)] == [1, 2, 3]
    assert len(await queue.move_to_dlq([], "none")) == 0


async def test_move_to_dlq_of_unknown_ids_moves_nothing(pair: tuple[Queue, Queue]) -> None:
    queue, dlq = pair
    result = await queue.move_to_dlq(["1-1", "0-5"], "ghost")
    assert result.count == 0 and result.not_moved == {"1-1": "not_found", "0-5": "not_found"}
    assert (await dlq.get_info()).message_count == 0


async def test_move_to_dlq_of_a_deleted_pending_entry_leaves_a_tombstone(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await queue.send_message("doomed")
    (msg,) = await queue.get_messages()
    await raw.xdel(queue.stream, msg.id)  # deleted behind the reader's back
    assert (await queue.move_to_dlq([msg.id], "lost")).moved == [msg.id]
    assert await pending_ids(raw, queue) == []
    (tomb,) = await dlq.get_messages()
    assert tomb.data is None
    assert tomb.dead_letter is not None
    assert (tomb.dead_letter.reason, tomb.dead_letter.source_id) == ("lost", msg.id)
    ((_, fields),) = await raw.xrange(dlq.stream)
    assert fields[b"dlq.missing"] == b"1"


async def test_requeue(pair: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, dlq = pair
    await queue.send_message({"retry": "me"}, message_id="r-1", headers={"k": "v"}, ttl=60)
    (msg,) = await queue.get_messages()
    await queue.move_to_dlq([msg.id], "try again", dlq)
    (dead,) = await dlq.get_messages()
    assert await dlq.requeue_messages([dead.id], queue) == 1
    assert await dlq.peek_messages() == []
    assert (await dlq.get_info()).pending_messages == 0
    (again,) = await queue.get_messages()
    assert again.id != msg.id  # a new entry of the main stream
    assert again.data == {"retry": "me"}
    assert again.message_id == "r-1"
    assert again.headers == {"k": "v"}
    assert again.attempt == 1
    assert again.dead_letter is None
    assert again.expires_at is None  # a requeued message starts afresh
    ((_, fields),) = await raw.xrange(queue.stream, again.id, again.id)
    assert not any(k.startswith(b"dlq.") for k in fields)
    assert fields.get(b"a") is None
    assert await dlq.requeue_messages([dead.id]) == 0  # gone already
    assert await dlq.requeue_messages([]) == 0


async def test_requeue_resets_attempts(pair: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, dlq = pair
    # An entry as the worker's retry script leaves it: attempts made, targeted at a group.
    body = msgspec.json.encode({"id": "m", "ts": 1.0, "p": "tired"})
    await raw.xadd(queue.stream, {"j": body, "a": "3", "g": queue.consumer_group})
    (msg,) = await queue.get_messages()
    assert msg.attempt == 4
    await queue.move_to_dlq([msg.id], "gave up")
    (dead,) = await dlq.get_messages()
    assert dead.attempt == 4
    await dlq.requeue_messages([dead.id])
    (again,) = await queue.get_messages()
    assert again.attempt == 1


async def test_requeue_targets_the_group_that_failed_it(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await raw.xgroup_create(queue.stream, "audit", id="0")
    await queue.send_message("x")
    (msg,) = await queue.get_messages()
    await raw.xreadgroup("audit", "auditor", {queue.stream: ">"})
    await queue.move_to_dlq([msg.id], "failed in orders-group only")
    (dead,) = await dlq.get_messages()
    await dlq.requeue_messages([dead.id])
    assert [m.data for m in await queue.get_messages()] == ["x"]
    # The audit group, which had handled it, skips the requeued copy.
    reply = await raw.xreadgroup("audit", "auditor", {queue.stream: ">"})
    assert reply  # it is delivered...
    entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
    ((_, fields),) = entries
    assert fields[b"g"] == b"orders-group"  # ...marked for orders-group only


async def test_peek_messages(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    ids = await queue.send_messages(range(5))
    peeked = await queue.peek_messages(count=3)
    assert [m.data for m in peeked] == [0, 1, 2]
    assert [m.id for m in peeked] == ids[:3]
    assert [m.data for m in await queue.peek_messages(start=ids[3])] == [3, 4]
    assert [m.data for m in await queue.peek_messages(count=2, start=f"({ids[0]}")] == [1, 2]
    # Peeking consumes nothing.
    assert (await queue.get_info()).pending_messages == 0
    assert [m.data for m in await queue.get_messages(count=10)] == [0, 1, 2, 3, 4]


async def test_purge(pair: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, dlq = pair
    await queue.send_messages([1, 2, 3], ttl=60)
    await queue.send_message(4, delay=60)
    await queue.get_messages()
    (m,) = await queue.get_messages()
    await queue.move_to_dlq([m.id], "x")
    assert await queue.purge() == 3
    info = await queue.get_info()
    assert (info.message_count, info.pending_messages, info.delayed_messages) == (0, 0, 0)
    assert await raw.exists(queue.keys.delayed, queue.keys.delayed_data, queue.keys.expiry) == 0
    assert info.consumer_groups == ("orders-group",)
    assert (await dlq.get_info()).message_count == 1  # the DLQ is left alone
    # The consumer group keeps working after a purge.
    sid = await queue.send_message("after")
    (after,) = await queue.get_messages()
    assert (after.id, after.data) == (sid, "after")
    assert await queue.acknowledge_messages([after.id]) == 1


async def test_purge_dlq(pair: tuple[Queue, Queue]) -> None:
    queue, dlq = pair
    await queue.send_messages([1, 2])
    await queue.send_message(3, delay=60)
    msgs = await queue.get_messages(count=2)
    await queue.move_to_dlq([m.id for m in msgs], "x")
    await dlq.get_messages()
    assert await dlq.purge() == 2
    assert (await dlq.get_info()).pending_messages == 0
    assert (await queue.get_info()).delayed_messages == 1  # main queue untouched
    assert await queue.purge() == 2
    await queue.send_message(9)
    (m,) = await queue.get_messages()
    await queue.move_to_dlq([m.id], "after purge")
    assert [d.data for d in await dlq.get_messages()] == [9]


async def test_get_info(pair: tuple[Queue, Queue]) -> None:
    queue, dlq = pair
    await queue.send_messages([1, 2, 3])
    await queue.send_message(4, delay=60)
    await queue.get_messages(count=2)
    info = await queue.get_info()
    assert info.name == "orders"
    assert info.is_dlq is False
    assert info.message_count == 3
    assert info.pending_messages == 2
    assert info.delayed_messages == 1
    assert info.consumer_group == "orders-group"
    assert info.consumer_groups == ("orders-group",)
    assert info.created_at is not None
    dinfo = await dlq.get_info()
    assert (dinfo.name, dinfo.is_dlq, dinfo.message_count) == ("orders:dlq", True, 0)
    assert dinfo.consumer_groups == ("orders-group-dlq",)


# -- TTL and the Redis clock ---------------------------------------------------------------


async def test_ttl_expiry_uses_the_redis_clock(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, _ = pair
    before = await redis_ms(raw)
    sid = await queue.send_message("soon gone", ttl=30)
    after = await redis_ms(raw)
    ((_, fields),) = await raw.xrange(queue.stream, sid, sid)
    expires = int(fields[b"x"])
    assert before + 30_000 - 5 <= expires <= after + 30_000 + 5
    assert await raw.zscore(queue.keys.expiry, sid) == expires
    (msg,) = await queue.get_messages()
    assert msg.expires_at == expires / 1000


async def test_a_skewed_local_clock_does_not_matter(
    pair: tuple[Queue, Queue], raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue, _ = pair
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this machine is an hour ahead
    before = await redis_ms(raw)
    sid = await queue.send_message("fresh", ttl=60)
    ((_, fields),) = await raw.xrange(queue.stream, sid, sid)
    assert int(fields[b"x"]) < before + 120_000  # not local time + ttl
    (msg,) = await queue.get_messages()  # not taken for expired
    assert msg.data == "fresh"


async def test_expired_messages_are_not_returned(
    pair: tuple[Queue, Queue], raw: aioredis.Redis, mq: LeanMQ
) -> None:
    queue, dlq = pair
    await queue.send_message("short", ttl=0.2)
    await queue.send_message("long", ttl=60)
    await anyio.sleep(0.3)
    msgs = await queue.get_messages(count=10)
    assert [m.data for m in msgs] == ["long"]
    # The expired one was acknowledged (not left pending), not dead-lettered.
    assert await pending_ids(raw, queue) == [msgs[0].id]
    assert (await dlq.get_info()).message_count == 0
    assert await mq.process_expired_messages() == 1
    assert [m.data for m in await queue.peek_messages()] == ["long"]
    assert await raw.zcard(queue.keys.expiry) == 1


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan"), "5", True])
async def test_bad_ttl(pair: tuple[Queue, Queue], ttl: Any) -> None:
    queue, _ = pair
    with pytest.raises(ConfigurationError, match="ttl"):
        await queue.send_message(1, ttl=ttl)
    with pytest.raises(ConfigurationError, match="ttl"):
        await queue.send_messages([1], ttl=ttl)
    assert (await queue.get_info()).message_count == 0


# -- delay ---------------------------------------------------------------------------------


async def test_delay(pair: tuple[Queue, Queue], mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue, _ = pair
    handle = await queue.send_message({"later": True}, delay=5, message_id="d-1")
    assert "|d-1|" in handle  # a schedule handle, not a stream id
    await queue.send_message("much later", delay=60)
    # Invisible until due: move_due (run by workers and by get_messages) moves it then.
    assert await queue.get_messages() == []
    info = await queue.get_info()
    assert (info.message_count, info.delayed_messages) == (0, 2)
    moved, wait = await mq.store.move_due(queue.keys, limit=0)
    assert moved == 0 and 0 <= wait <= 5_000
    mq.store.clock_shift_ms = 5_000
    moved, wait = await mq.store.move_due(queue.keys)
    assert moved == 1 and 0 < wait <= 60_000  # the other one is still waiting
    (msg,) = await queue.get_messages()
    assert (msg.data, msg.message_id) == ({"later": True}, "d-1")
    assert await raw.zcard(queue.keys.delayed) == 1
    assert await raw.hlen(queue.keys.delayed_data) == 1


async def test_delay_with_ttl(pair: tuple[Queue, Queue], mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue, _ = pair
    await queue.send_messages(range(20), delay=0.05, ttl=60)
    await anyio.sleep(0.15)
    assert (await mq.store.move_due(queue.keys))[0] == 20
    msgs = await queue.get_messages(count=50)
    assert [m.data for m in msgs] == list(range(20))  # due together, kept in send order
    assert all(m.expires_at is not None for m in msgs)
    assert await raw.zcard(queue.keys.expiry) == 20


async def test_get_messages_moves_due_delayed_messages(
    pair: tuple[Queue, Queue], mq: LeanMQ
) -> None:
    queue, _ = pair
    await queue.send_message("in 30 s", delay=30)
    await queue.send_message("in 60 s", delay=60)
    assert await queue.get_messages(count=5) == []
    mq.store.clock_shift_ms = 30_000  # no worker runs: the reader moves it itself
    assert [m.data for m in await queue.get_messages(count=5)] == ["in 30 s"]
    assert (await queue.get_info()).delayed_messages == 1
    mq.store.clock_shift_ms = 60_000
    assert [m.data for m in await queue.get_messages(count=5, block_for_seconds=1)] == ["in 60 s"]
    assert (await queue.get_info()).delayed_messages == 0


async def test_blocking_read_wakes_for_a_delayed_message_coming_due(
    pair: tuple[Queue, Queue],
) -> None:
    queue, _ = pair
    await queue.send_message("soon", delay=0.3)
    await queue.send_message("much later", delay=60)
    # The read blocks only until the first delayed message is due, moves it and returns it
    # (a 5 s block would end the 3 s wait empty-handed).
    assert [m.data for m in await queue.get_messages(block_for_seconds=3)] == ["soon"]
    assert await queue.get_messages(block_for_seconds=0.2) == []


async def test_get_messages_moves_due_messages_after_redis_lost_its_scripts(
    pair: tuple[Queue, Queue], mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = pair
    await queue.send_message("later", delay=30)
    assert await queue.get_messages() == []  # MOVE_DUE is loaded now
    await raw.script_flush()
    mq.store.clock_shift_ms = 30_000
    assert [m.data for m in await queue.get_messages()] == ["later"]


async def test_a_broken_delayed_set_does_not_hide_messages_read(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, _ = pair
    await queue.send_message("ready")
    await raw.set(queue.keys.delayed, "not a zset")
    # The read ran in the same round trip: its message is handed out, not left pending.
    assert [m.data for m in await queue.get_messages()] == ["ready"]
    with pytest.raises(RedisOperationError, match=r"move due.*WRONGTYPE"):
        await queue.get_messages()


@pytest.mark.parametrize("delay", [0, -0.5, float("inf")])
async def test_bad_delay(pair: tuple[Queue, Queue], delay: float) -> None:
    queue, _ = pair
    with pytest.raises(ConfigurationError, match="delay"):
        await queue.send_message(1, delay=delay)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [
        "abc",
        "123",
        "1-",
        "-1",
        "1-2-3",
        " 1-1",
        "1-1\n",
        "1.5-1",
        "\u0661-\u0661",  # non-ASCII digits (Arabic-Indic one)
        "99999999999999999999-0",  # over 2**64 - 1
        "1-18446744073709551616",
        "9" * 5000 + "-0",
        "",
        5,
        None,
        "7f4e2b52-3f2c-4c1e-9d0b-0c7e2f9b1a11",  # a message_id, not a stream id
    ],
)
async def test_malformed_ids(pair: tuple[Queue, Queue], bad_id: Any) -> None:
    queue, dlq = pair
    await queue.send_message(1)
    (msg,) = await queue.get_messages()
    for call in (
        queue.acknowledge_messages,
        queue.delete_messages,
        lambda ids: queue.move_to_dlq(ids, "x"),
        dlq.requeue_messages,
        dlq.delete_messages,
    ):
        with pytest.raises(InvalidMessageIdError) as info:
            await call([msg.id, bad_id])
        assert isinstance(info.value, ValueError)
    # Nothing was done for the valid id in the same call.
    assert (await queue.get_info()).pending_messages == 1
    assert (await dlq.get_info()).message_count == 0


async def test_largest_valid_id_is_accepted(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    assert await queue.acknowledge_messages(["18446744073709551615-18446744073709551615"]) == 0


@pytest.mark.parametrize("single", ["1-1", b"1-1"])
async def test_a_single_id_instead_of_a_list(pair: tuple[Queue, Queue], single: Any) -> None:
    queue, dlq = pair
    with pytest.raises(InvalidMessageIdError, match="list"):
        await queue.acknowledge_messages(single)
    with pytest.raises(InvalidMessageIdError, match="list"):
        await queue.delete_messages(single)
    with pytest.raises(InvalidMessageIdError, match="list"):
        await queue.move_to_dlq(single, "x")
    with pytest.raises(InvalidMessageIdError, match="list"):
        await dlq.requeue_messages(single)
    with pytest.raises(InvalidMessageIdError):
        await queue.acknowledge_messages(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [0, -1, True, 1.5, "3", None])
async def test_bad_count(pair: tuple[Queue, Queue], count: Any) -> None:
    queue, _ = pair
    with pytest.raises(ConfigurationError, match="count"):
        await queue.get_messages(count=count)


async def test_dlq_used_as_main_queue(pair: tuple[Queue, Queue], mq: LeanMQ) -> None:
    queue, dlq = pair
    other, other_dlq = await mq.create_queue_pair("other")
    with pytest.raises(WrongQueueKindError):
        await dlq.send_message(1)
    with pytest.raises(WrongQueueKindError):
        await dlq.send_messages([1])
    with pytest.raises(WrongQueueKindError):
        await dlq.move_to_dlq(["1-1"], "x")
    with pytest.raises(WrongQueueKindError):
        dlq.dead_letter_queue()
    with pytest.raises(WrongQueueKindError, match="dead-letter"):
        await queue.move_to_dlq(["1-1"], "x", other_dlq)  # another queue's DLQ
    with pytest.raises(WrongQueueKindError):
        await queue.move_to_dlq(["1-1"], "x", other)  # a main queue as DLQ
    with pytest.raises(WrongQueueKindError):
        await queue.move_to_dlq(["1-1"], "x", queue)
    with pytest.raises(WrongQueueKindError, match="dead-letter"):
        await queue.requeue_messages(["1-1"])
    with pytest.raises(WrongQueueKindError):
        await dlq.requeue_messages(["1-1"], other)
    with pytest.raises(WrongQueueKindError):
        await dlq.requeue_messages(["1-1"], other_dlq)
    async with mq.transaction() as tx:
        with pytest.raises(WrongQueueKindError):
            tx.send_message(dlq, 1)
    assert tx.stream_ids == []
    for q in (queue, dlq, other, other_dlq):
        assert (await q.get_info()).message_count == 0


async def test_queue_equality(mq: LeanMQ, redis_server: RedisServer) -> None:
    a = mq.queue("orders")
    assert a == mq.queue("orders") and hash(a) == hash(mq.queue("orders"))
    assert a != a.dead_letter_queue()
    assert a != mq.queue("other")
    async with LeanMQ(redis_server.url, prefix=mq.prefix) as same:
        assert same.queue("orders") == a
    async with LeanMQ(redis_server.url, prefix=mq.prefix + "x:") as other:
        assert other.queue("orders") != a
    assert a.mq is mq


# -- garbled entries ------------------------------------------------------------------------


async def test_garbled_entries_go_to_the_dlq(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    good = msgspec.json.encode({"id": "g", "ts": 1.0, "p": "fine"})
    await queue.send_message("first")
    garbage: list[dict[str, Any]] = [
        {"random": "fields", "n": "1"},
        {"j": bytes(range(256))},
        {"j": good[:-4]},
        {"j": b'{"ts": 1.0, "p": 1}'},  # no id
        {"j": b'{"id": "x", "ts": 1.0}'},  # no payload
        {"j": b'{"id": "x", "ts": 1.0, "p": 1, "h": {"k": 2}}'},  # header not a str
        {"j": b"null"},
        {"m": b"\xc1"},
        {"j": good, "a": "many"},
        {"j": good, "x": "soon"},
        {"j": good, "g": b"\xff\xfe"},
    ]
    bad_ids = [(await raw.xadd(queue.stream, f)).decode() for f in garbage]
    tolerated = await raw.xadd(
        queue.stream,
        {"j": b'{"id": "t", "ts": 2.0, "p": {"v": 1}, "future": {"x": [1]}}', "zz": "extra"},
    )
    await queue.send_message("last")
    msgs = await queue.get_messages(count=100)
    assert [m.data for m in msgs] == ["first", {"v": 1}, "last"]
    assert msgs[1].id == tolerated.decode() and msgs[1].message_id == "t"
    # Only the good ones are pending; each bad one is in the DLQ with its reason.
    assert await pending_ids(raw, queue) == [m.id for m in msgs]
    dead = await dlq.peek_messages(count=100)
    assert len(dead) == len(garbage)
    by_source = {d.dead_letter.source_id: d for d in dead if d.dead_letter}
    assert set(by_source) == set(bad_ids)
    for sid, fields in zip(bad_ids, garbage, strict=True):
        info = by_source[sid].dead_letter
        assert info is not None
        assert info.reason, fields
        assert info.error_type == "MessageDecodeError"
        assert info.source_queue == "orders"
        assert info.group == "orders-group"
        assert by_source[sid].data is None
    # Garbage is moved intact: every original field is kept in the DLQ entry.
    ((_, fields),) = await raw.xrange(dlq.stream, dead[0].id, dead[0].id)
    assert fields[b"random"] == b"fields" and fields[b"n"] == b"1"
    ((_, fields),) = await raw.xrange(dlq.stream, dead[1].id, dead[1].id)
    assert fields[b"j"] == bytes(range(256))
    assert await queue.get_messages(count=100) == []


async def test_garbled_entries_only_still_return_waiting_messages(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    for i in range(3):
        await raw.xadd(queue.stream, {"junk": str(i)})
    await queue.send_message("behind the junk")
    # count=1: three reads hit junk, the fourth finds the message; no wait needed.
    assert [m.data for m in await queue.get_messages()] == ["behind the junk"]
    assert (await dlq.get_info()).message_count == 3


async def test_garbled_entries_in_dlq_and_peek(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await raw.xadd(queue.stream, {"j": b"{"})
    await raw.xadd(dlq.stream, {b"dlq.reason": b"\xff", b"dlq.\xfe": b"x", b"dlq.attempts": b"x"})
    (peeked,) = await queue.peek_messages()
    assert peeked.data is None  # peek shows garbage, it does not move it
    (dead,) = await dlq.get_messages()
    assert dead.data is None
    assert dead.dead_letter is not None and dead.dead_letter.attempts == 0


async def test_foreign_group_entries_are_skipped(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    body = msgspec.json.encode({"id": "f", "ts": 1.0, "p": "billing only"})
    await raw.xadd(queue.stream, {"j": body, "g": "billing"})
    await raw.xadd(queue.stream, {"j": body, "g": "orders-group"})
    (msg,) = await queue.get_messages(count=10)
    assert msg.data == "billing only"
    assert await pending_ids(raw, queue) == [msg.id]
    assert (await dlq.get_info()).message_count == 0


async def test_reading_a_queue_that_was_not_created(mq: LeanMQ) -> None:
    queue = mq.queue("declared-only")
    await queue.send_message("waiting")
    with pytest.raises(QueueNotFoundError, match="create_queue_pair"):
        await queue.get_messages()
    with pytest.raises(QueueNotFoundError):
        await queue.dead_letter_queue().get_messages(block_for_seconds=0.05)
    await mq.create_queue_pair("declared-only")
    assert [m.data for m in await queue.get_messages()] == ["waiting"]
