"""LeanMQ's queue management: create, get, list, delete, expire, health."""

from __future__ import annotations

import time

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import (
    ConfigurationError,
    DeadLetterQueueNotFoundError,
    LeanMQ,
    Queue,
    QueueInfo,
    QueueNotFoundError,
)
from leanmq_async.testing import RedisServer

pytestmark = pytest.mark.anyio


async def group_names(raw: aioredis.Redis, stream: str) -> set[str]:
    return {g["name"].decode() for g in await raw.xinfo_groups(stream)}


async def deliver(raw: aioredis.Redis, queue: Queue, group: str, count: int) -> list[str]:
    """Deliver entries to ``group`` with a plain XREADGROUP (no expiry check: no race
    with a short TTL); return their ids."""
    reply = await raw.xreadgroup(group, "c", {queue.stream: ">"}, count=count)
    entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
    return [sid.decode() for sid, _ in entries]


async def test_create_queue_pair_creates_everything(
    mq: LeanMQ, raw: aioredis.Redis, prefix: str
) -> None:
    before = time.time()
    queue, dlq = await mq.create_queue_pair("orders")
    assert (queue.name, queue.is_dlq, queue.base_name) == ("orders", False, "orders")
    assert (dlq.name, dlq.is_dlq, dlq.base_name) == ("orders:dlq", True, "orders")
    assert await raw.type(queue.stream) == b"stream"
    assert await raw.type(dlq.stream) == b"stream"
    assert await group_names(raw, queue.stream) == {"orders-group"}
    assert await group_names(raw, dlq.stream) == {"orders-group-dlq"}
    meta = await raw.hgetall(queue.keys.meta)
    assert meta[b"consumer_group"] == b"orders-group"
    assert meta[b"dlq_group"] == b"orders-group-dlq"
    assert before - 1 <= float(meta[b"created_at"]) <= time.time() + 1
    assert await raw.smembers(f"{prefix}{{}}:registry") == {b"orders"}


async def test_create_queue_pair_is_idempotent(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue, dlq = await mq.create_queue_pair("orders")
    created = await raw.hget(queue.keys.meta, "created_at")
    sid = await queue.send_message({"kept": True})
    (first,) = await queue.get_messages()
    again, again_dlq = await mq.create_queue_pair("orders")
    assert (again, again_dlq) == (queue, dlq)
    assert again is queue  # one Queue object per name and client
    assert await raw.hget(queue.keys.meta, "created_at") == created
    info = await queue.get_info()
    assert (info.message_count, info.pending_messages) == (1, 1)
    assert first.id == sid
    assert await group_names(raw, queue.stream) == {"orders-group"}


async def test_groups_read_messages_sent_before_creation(mq: LeanMQ) -> None:
    queue = mq.queue("early")
    await queue.send_message("before")
    await mq.create_queue_pair("early")
    assert [m.data for m in await queue.get_messages(count=5)] == ["before"]


async def test_get_queue(mq: LeanMQ) -> None:
    queue, dlq = await mq.create_queue_pair("orders")
    assert await mq.get_queue("orders") is queue
    assert await mq.get_queue("orders:dlq") is dlq
    assert await mq.get_dead_letter_queue("orders") is dlq
    assert await mq.get_dead_letter_queue("orders:dlq") is dlq


async def test_unknown_queues_raise(mq: LeanMQ) -> None:
    with pytest.raises(QueueNotFoundError, match="create_queue_pair"):
        await mq.get_queue("missing")
    with pytest.raises(QueueNotFoundError):
        await mq.get_queue("missing:dlq")
    with pytest.raises(DeadLetterQueueNotFoundError) as info:
        await mq.get_dead_letter_queue("missing")
    assert isinstance(info.value, QueueNotFoundError)
    assert isinstance(info.value, LookupError)


async def test_a_queue_only_sent_to_is_not_created(mq: LeanMQ) -> None:
    await mq.queue("adhoc").send_message(1)
    with pytest.raises(QueueNotFoundError):
        await mq.get_queue("adhoc")
    assert await mq.list_queues() == []


async def test_queue_names_are_validated(mq: LeanMQ) -> None:
    for bad in ("with space", "{braced}", "a}", ""):
        with pytest.raises(ConfigurationError):
            mq.queue(bad)
        with pytest.raises(ConfigurationError):
            await mq.create_queue_pair(bad)
        with pytest.raises(ConfigurationError):
            await mq.get_queue(bad)
        with pytest.raises(ConfigurationError):
            await mq.delete_queue(bad)
    with pytest.raises(ConfigurationError, match="dead-letter"):
        mq.queue("orders:dlq")
    with pytest.raises(ConfigurationError, match="dead-letter"):
        await mq.create_queue_pair("orders:dlq")


async def test_list_queues(mq: LeanMQ) -> None:
    assert await mq.list_queues() == []
    before = time.time()
    queue, _ = await mq.create_queue_pair("b-orders")
    await mq.create_queue_pair("a-mail")
    await queue.send_messages([1, 2, 3])
    await queue.send_message(4, delay=60)
    await queue.get_messages(count=2)
    (m,) = await queue.get_messages()
    await queue.move_to_dlq([m.id], "x")
    infos = await mq.list_queues()
    assert [i.name for i in infos] == ["a-mail", "a-mail:dlq", "b-orders", "b-orders:dlq"]
    by_name = {i.name: i for i in infos}
    main = by_name["b-orders"]
    assert isinstance(main, QueueInfo)
    assert main.is_dlq is False
    assert main.message_count == 3
    assert main.consumer_group == "b-orders-group"
    assert main.pending_messages == 2
    assert main.created_at is not None and before - 1 <= main.created_at <= time.time() + 1
    assert main.delayed_messages == 1
    assert main.consumer_groups == ("b-orders-group",)
    dead = by_name["b-orders:dlq"]
    assert (dead.is_dlq, dead.message_count, dead.pending_messages) == (True, 1, 0)
    assert dead.consumer_group == "b-orders-group-dlq"
    assert dead.created_at == main.created_at
    assert dead.delayed_messages == 0
    empty = by_name["a-mail"]
    assert (empty.message_count, empty.pending_messages, empty.delayed_messages) == (0, 0, 0)
    assert "b-orders" in repr(main)


async def test_list_queues_is_per_prefix(redis_server: RedisServer, mq: LeanMQ) -> None:
    await mq.create_queue_pair("mine")
    async with LeanMQ(redis_server.url, prefix=mq.prefix + "other:") as other:
        await other.create_queue_pair("theirs")
        assert [i.name for i in await other.list_queues()] == ["theirs", "theirs:dlq"]
        await other.delete_queue("theirs")
    assert [i.name for i in await mq.list_queues()] == ["mine", "mine:dlq"]


async def test_delete_queue_with_dlq(mq: LeanMQ, raw: aioredis.Redis, prefix: str) -> None:
    queue, _ = await mq.create_queue_pair("orders")
    await queue.send_message(1, ttl=60)
    await queue.send_message(2, delay=60)
    (m,) = await queue.get_messages()
    await queue.move_to_dlq([m.id], "x")
    assert await mq.delete_queue("orders") is True
    assert await raw.keys(f"{prefix}*") == []
    with pytest.raises(QueueNotFoundError):
        await mq.get_queue("orders")
    with pytest.raises(DeadLetterQueueNotFoundError):
        await mq.get_dead_letter_queue("orders")
    assert await mq.list_queues() == []
    assert await mq.delete_queue("orders") is False
    assert await mq.delete_queue("never-created") is False


async def test_delete_queue_keeping_the_dlq(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue, dlq = await mq.create_queue_pair("orders")
    await queue.send_messages([1, 2])
    await queue.send_message(3, delay=60)
    await queue.send_message(4, ttl=60)
    first, *_ = await queue.get_messages(count=5)
    await queue.move_to_dlq([first.id], "keep me")
    assert await mq.delete_queue("orders", delete_dlq=False) is True
    for key in (queue.stream, queue.keys.delayed, queue.keys.delayed_data, queue.keys.expiry):
        assert await raw.exists(key) == 0
    with pytest.raises(QueueNotFoundError):
        await mq.get_queue("orders")
    # The dead-letter queue survives, and is still found and listed.
    assert await mq.get_dead_letter_queue("orders") is dlq
    assert await mq.get_queue("orders:dlq") is dlq
    assert [(i.name, i.message_count) for i in await mq.list_queues()] == [("orders:dlq", 1)]
    (dead,) = await dlq.get_messages()
    assert dead.data == 1
    assert dead.dead_letter is not None and dead.dead_letter.reason == "keep me"
    # Re-creating the pair brings the main queue back next to the old DLQ.
    await mq.create_queue_pair("orders")
    assert [i.name for i in await mq.list_queues()] == ["orders", "orders:dlq"]
    assert await dlq.requeue_messages([dead.id]) == 1
    assert [m.data for m in await queue.get_messages()] == [1]
    # Then deleting with the DLQ removes everything.
    assert await mq.delete_queue("orders", delete_dlq=True) is True
    assert await mq.list_queues() == []


async def test_delete_queue_refuses_a_dlq_name(mq: LeanMQ) -> None:
    await mq.create_queue_pair("orders")
    with pytest.raises(ConfigurationError, match="delete_dlq"):
        await mq.delete_queue("orders:dlq")


async def test_process_expired_messages_drop(mq: LeanMQ, raw: aioredis.Redis) -> None:
    q1, dlq1 = await mq.create_queue_pair("one")
    q2, _ = await mq.create_queue_pair("two")
    await q1.send_messages(["a", "b"], ttl=0.05)
    await q1.send_message("lives", ttl=60)
    await q2.send_message("c", ttl=0.05)
    await q2.send_message("no ttl")
    await anyio.sleep(0.15)
    assert await mq.process_expired_messages() == 3
    assert [m.data for m in await q1.peek_messages()] == ["lives"]
    assert [m.data for m in await q2.peek_messages()] == ["no ttl"]
    assert await raw.zcard(q1.keys.expiry) == 1
    assert await raw.xlen(dlq1.stream) == 0
    assert await mq.process_expired_messages() == 0


async def test_process_expired_messages_dlq(mq: LeanMQ) -> None:
    queue, dlq = await mq.create_queue_pair("orders")
    sid = await queue.send_message({"late": True}, ttl=0.05, message_id="late-1")
    await anyio.sleep(0.15)
    assert await mq.process_expired_messages(policy="dlq") == 1
    assert await queue.peek_messages() == []
    (dead,) = await dlq.get_messages()
    assert dead.data == {"late": True}
    assert dead.message_id == "late-1"
    info = dead.dead_letter
    assert info is not None
    assert (info.reason, info.error_type, info.source_queue, info.source_id) == (
        "expired",
        "Expired",
        "orders",
        sid,
    )
    # Requeued, the message is delivered again (to every group) and no longer expires.
    assert await dlq.requeue_messages([dead.id]) == 1
    (again,) = await queue.get_messages()
    assert again.data == {"late": True}
    assert again.expires_at is None


async def test_expired_dlq_policy_spares_processed_messages(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, dlq = await mq.create_queue_pair("orders")
    await queue.send_message("done", ttl=0.05)
    await queue.send_message("never read", ttl=0.05)
    (done,) = await deliver(raw, queue, queue.consumer_group, 1)
    await queue.acknowledge_messages([done])
    await anyio.sleep(0.15)
    assert await mq.process_expired_messages(policy="dlq") == 2
    assert [m.data for m in await dlq.peek_messages()] == ["never read"]
    assert await queue.peek_messages() == []


async def test_expiry_leaves_pending_messages_to_their_consumer(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    # Delivered before its TTL: the delivery is honoured, the expiry pass does not touch it.
    queue, dlq = await mq.create_queue_pair("orders")
    await queue.send_message("held", ttl=0.05)
    (held,) = await deliver(raw, queue, queue.consumer_group, 1)  # read, not acked
    await anyio.sleep(0.15)
    assert await mq.process_expired_messages(policy="dlq") == 0
    assert await dlq.peek_messages() == []
    assert (await queue.get_info()).pending_messages == 1
    assert await queue.acknowledge_messages([held]) == 1  # handled
    mq.store.clock_shift_ms = 60_000  # past the re-check
    assert await mq.process_expired_messages(policy="dlq") == 1  # removed, not dead-lettered
    assert await dlq.peek_messages() == []
    assert await raw.zcard(queue.keys.expiry) == 0


async def test_process_expired_messages_bad_policy(mq: LeanMQ) -> None:
    with pytest.raises(ConfigurationError, match="policy"):
        await mq.process_expired_messages(policy="keep")


async def test_process_expired_messages_loops_over_batches(mq: LeanMQ) -> None:
    queue, _ = await mq.create_queue_pair("many")
    await queue.send_messages(range(25), ttl=0.05)
    await anyio.sleep(0.15)
    assert await mq.process_expired_messages(limit=10) == 25
    assert (await queue.get_info()).message_count == 0


async def test_health(mq: LeanMQ) -> None:
    assert await mq.health() == {"status": "ok", "redis": True}


async def test_consumer_name_is_used_for_reads(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    async with (
        LeanMQ(redis_server.url, prefix=prefix) as a,
        LeanMQ(redis_server.url, prefix=prefix) as b,
    ):
        assert a.consumer_name != b.consumer_name
        qa, _ = await a.create_queue_pair("shared")
        qb = await b.get_queue("shared")
        await qa.send_messages([1, 2])
        assert len(await qa.get_messages()) == 1
        assert len(await qb.get_messages()) == 1
        await qa.send_message(3)
        assert len(await qa.get_messages(consumer_id="explicit")) == 1
        consumers = {
            c["name"].decode(): c["pending"]
            for c in await raw.xinfo_consumers(qa.stream, qa.consumer_group)
        }
        assert consumers == {a.consumer_name: 1, b.consumer_name: 1, "explicit": 1}


async def test_repr(mq: LeanMQ) -> None:
    text = repr(mq)
    assert mq.prefix in text and mq.consumer_name in text
    queue = mq.queue("orders")
    assert "orders" in repr(queue) and "dead-letter" in repr(queue.dead_letter_queue())
