"""Idempotent sends (issue 17): an explicit message_id is deduplicated per queue, within
a window, atomically inside the send script."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from leanmq_async import (
    ConfigurationError,
    Durability,
    LeanMQ,
    NotReplicatedError,
    Queue,
    RedisOperationError,
    TransactionError,
)
from leanmq_async.idempotency import DEFAULT_DEDUP_WINDOW
from leanmq_async.testing import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def queue(mq: LeanMQ) -> Queue:
    q, _ = await mq.create_queue_pair("idem")
    return q


async def test_a_resend_of_the_same_id_writes_nothing_and_returns_the_first_id(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    assert mq.dedup_window == DEFAULT_DEDUP_WINDOW == 300.0
    first = await queue.send_message({"n": 1}, message_id="order-1")
    again = await queue.send_message({"n": 2}, message_id="order-1")  # payload ignored
    assert again == first
    assert await raw.xlen(queue.stream) == 1
    assert [m.data for m in await queue.get_messages(5)] == [{"n": 1}]
    assert mq.store.dedup_hits == 1
    # Another id, and a generated id (no message_id), are written.
    other = await queue.send_message({"n": 3}, message_id="order-2")
    assert other != first
    await queue.send_message({"n": 4})
    await queue.send_message({"n": 4})
    assert await raw.xlen(queue.stream) == 4


async def test_the_window_counts_from_the_first_send(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    first = await queue.send_message(1, message_id="w")
    mq.store.clock_shift_ms = 299_000
    assert await queue.send_message(2, message_id="w") == first  # does not extend it
    mq.store.clock_shift_ms = 300_000
    later = await queue.send_message(3, message_id="w")
    assert later != first
    assert await raw.xlen(queue.stream) == 2
    mq.store.clock_shift_ms = 590_000
    assert await queue.send_message(4, message_id="w") == later


async def test_per_call_and_per_client_windows(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix, dedup_window=10) as mq:
        queue = mq.queue("w")
        a = await queue.send_message(1, message_id="a")
        assert await queue.send_message(1, message_id="a") == a
        mq.store.clock_shift_ms = 10_000
        assert await queue.send_message(1, message_id="a") != a
        # Per call: a longer window for this send; 0 turns dedup off for the call.
        b = await queue.send_message(1, message_id="b", dedup_window=60)
        mq.store.clock_shift_ms = 50_000
        assert await queue.send_message(1, message_id="b") == b
        c1 = await queue.send_message(1, message_id="c", dedup_window=0)
        c2 = await queue.send_message(1, message_id="c", dedup_window=0)
        assert c1 != c2
        assert await raw.xlen(queue.stream) == 5  # a, a (after its window), b, c, c
    async with LeanMQ(redis_server.url, prefix=prefix + "off:", dedup_window=0) as off:
        q = off.queue("w")
        assert await q.send_message(1, message_id="x") != await q.send_message(1, message_id="x")


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "60"])
async def test_a_bad_window_is_refused(mq: LeanMQ, queue: Queue, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="dedup_window"):
        LeanMQ("redis://127.0.0.1:1", dedup_window=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="dedup_window"):
        await queue.send_message(1, message_id="m", dedup_window=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="dedup_window"):
        await queue.send_message(1, dedup_window=bad)  # type: ignore[arg-type]


async def test_queues_do_not_share_records(mq: LeanMQ, raw: aioredis.Redis) -> None:
    a, b = mq.queue("idem-a"), mq.queue("idem-b")
    await a.send_message(1, message_id="m")
    await b.send_message(1, message_id="m")  # its id may equal a's: another stream
    assert await raw.xlen(a.stream) == await raw.xlen(b.stream) == 1


async def test_a_delayed_send_is_deduplicated_by_its_schedule_handle(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    handle = await queue.send_message({"later": 1}, message_id="d", delay=30)
    assert await queue.send_message({"later": 1}, message_id="d", delay=30) == handle
    assert await queue.send_message({"now": 1}, message_id="d") == handle  # same id: a dup
    assert await raw.zcard(queue.keys.delayed) == 1
    assert await raw.xlen(queue.stream) == 0
    mq.store.clock_shift_ms = 31_000
    assert [m.data for m in await queue.get_messages(5)] == [{"later": 1}]
    # Still within the window after it became visible: a resend writes nothing.
    assert await queue.send_message({"later": 1}, message_id="d", delay=30) == handle
    assert await raw.zcard(queue.keys.delayed) == 0


async def test_a_ttl_send_is_deduplicated(mq: LeanMQ, queue: Queue, raw: aioredis.Redis) -> None:
    sid = await queue.send_message(1, message_id="t", ttl=60)
    assert await queue.send_message(1, message_id="t", ttl=60) == sid
    assert await raw.zcard(queue.keys.expiry) == 1


async def test_send_messages_with_message_ids(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    first = await queue.send_message(0, message_id="x")
    ids = await queue.send_messages([1, 2, 3, 4, 5], message_ids=["a", "b", "a", None, "x"])
    assert ids[2] == ids[0]  # the same id twice in one call: one entry
    assert ids[4] == first  # sent before
    assert len({ids[0], ids[1], ids[3], first}) == 4
    assert await raw.xlen(queue.stream) == 4
    assert [m.data for m in await queue.get_messages(10)] == [0, 1, 2, 4]
    assert mq.store.dedup_hits == 2
    # A retry of the whole call writes nothing and returns the same ids.
    assert await queue.send_messages([1, 2, 3, 4, 5], message_ids=["a", "b", "a", "y", "x"]) == [
        ids[0],
        ids[1],
        ids[0],
        (await raw.xrevrange(queue.stream, count=1))[0][0].decode(),
        first,
    ]
    with pytest.raises(ConfigurationError, match="one per item"):
        await queue.send_messages([1, 2], message_ids=["a"])
    with pytest.raises(ConfigurationError, match="sequence of ids"):
        await queue.send_messages([1], message_ids="a")


async def test_a_transaction_with_a_duplicate(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    other = mq.queue("idem-other")
    first = await queue.send_message({"k": 0}, message_id="tx-1")
    async with mq.transaction() as tx:
        tx.send_message(queue, {"k": 1}, "tx-1")  # sent before: nothing written
        tx.send_message(queue, {"k": 2}, "tx-2")
        tx.send_message(queue, {"k": 3}, "tx-2")  # twice in the same commit
        tx.send_message(other, {"k": 4}, "tx-1")  # another queue: its own records
    assert tx.stream_ids[0] == first
    assert tx.stream_ids[2] == tx.stream_ids[1] != first
    assert await raw.xlen(queue.stream) == 2
    assert await raw.xlen(other.stream) == 1  # tx-1 of another queue is written
    # The whole transaction again: nothing new.
    async with mq.transaction() as again:
        again.send_message(queue, {"k": 1}, "tx-1")
        again.send_message(queue, {"k": 2}, "tx-2")
        again.send_message(other, {"k": 4}, "tx-1")
    assert again.stream_ids == [first, tx.stream_ids[1], tx.stream_ids[3]]
    assert await raw.xlen(queue.stream) == 2 and await raw.xlen(other.stream) == 1


MAX_ID = "18446744073709551615-18446744073709551615"


async def test_a_failed_batch_leaves_no_dedup_record(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    """The undo path: a batch whose last write fails is written not at all, its dedup
    records included, so the same sends can be retried."""
    full = mq.queue("idem-full")
    await raw.xadd(full.stream, {"filler": "1"}, id=MAX_ID)
    await raw.xdel(full.stream, MAX_ID)  # XADD * on it fails inside the script
    with pytest.raises(TransactionError, match="nothing was written"):
        async with mq.transaction() as tx:
            tx.send_message(queue, 1, "u-1", ttl=60)
            tx.send_message(queue, 2, "u-2", delay=60)
            tx.send_message(full, 3, "u-3")
    assert await raw.exists(queue.keys.dedup, queue.keys.dedup_until, full.keys.dedup) == 0
    assert await raw.xlen(queue.stream) == 0
    with pytest.raises(RedisOperationError, match="nothing of this batch was written"):
        await full.send_messages([1, 2], message_ids=["f-1", "f-2"])
    assert await raw.exists(full.keys.dedup, full.keys.dedup_until) == 0
    # The retry, once the cause is gone, writes them.
    await raw.delete(full.stream)
    async with mq.transaction() as retry:
        retry.send_message(queue, 1, "u-1", ttl=60)
        retry.send_message(queue, 2, "u-2", delay=60)
        retry.send_message(full, 3, "u-3")
    assert await raw.xlen(queue.stream) == 1 and await raw.xlen(full.stream) == 1
    assert await raw.hlen(queue.keys.dedup) == 2


@pytest.mark.parametrize("broken", ["dedup", "dedup_until"])
async def test_a_wrong_typed_dedup_key_fails_before_any_write(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis, broken: str
) -> None:
    await raw.set(getattr(queue.keys, broken), "x")
    with pytest.raises(RedisOperationError, match="WRONGTYPE"):
        await queue.send_message(1, message_id="m")
    assert await raw.xlen(queue.stream) == 0
    # A send that does not deduplicate does not look at those keys.
    await queue.send_message(1, message_id="m", ttl=60, dedup_window=0)
    assert await raw.xlen(queue.stream) == 1


async def test_records_expire_with_the_window(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    """Memory: expired records are swept by later sends, and both keys expire after the
    longest window of their last send."""
    await queue.send_messages(list(range(50)), message_ids=[f"m{i}" for i in range(50)])
    assert await raw.hlen(queue.keys.dedup) == await raw.zcard(queue.keys.dedup_until) == 50
    for key in (queue.keys.dedup, queue.keys.dedup_until):
        assert 299_000 < await raw.pttl(key) <= 300_000
    await queue.send_message(1, message_id="short", dedup_window=5)
    assert 299_000 < await raw.pttl(queue.keys.dedup) <= 300_000  # never shortened
    mq.store.clock_shift_ms = 300_000
    await queue.send_message(1, message_id="new", dedup_window=1)
    assert await raw.hkeys(queue.keys.dedup) == [b"new"]
    assert await raw.zcard(queue.keys.dedup_until) == 1
    # A window of 50 ms: the keys themselves are gone soon after (real time).
    other = mq.queue("idem-ttl")
    await other.send_message(1, message_id="gone", dedup_window=0.05)
    assert 0 < await raw.pttl(other.keys.dedup) <= 50


async def test_delete_queue_and_purge_forget_the_records(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    # (Ids are not compared across a purge or a delete: a new stream may reuse them.)
    await queue.send_message(1, message_id="p")
    assert await queue.purge() == 1
    assert await raw.exists(queue.keys.dedup, queue.keys.dedup_until) == 0
    after_purge = await queue.send_message(1, message_id="p")
    assert await raw.xlen(queue.stream) == 1 and mq.store.dedup_hits == 0
    # The DLQ's purge leaves the main queue's records alone.
    await queue.dead_letter_queue().purge()
    assert await queue.send_message(1, message_id="p") == after_purge
    assert mq.store.dedup_hits == 1
    assert await mq.delete_queue("idem", delete_dlq=False)
    assert await raw.exists(queue.keys.dedup, queue.keys.dedup_until) == 0
    await mq.create_queue_pair("idem")
    await queue.send_message(1, message_id="p")
    assert await raw.xlen(queue.stream) == 1 and mq.store.dedup_hits == 1
    await queue.send_message(1, message_id="q")
    assert await mq.delete_queue("idem")
    assert await raw.exists(queue.keys.dedup, queue.keys.dedup_until) == 0


async def test_clear_queue_forgets_the_records(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    await queue.send_message(1, message_id="c")
    assert await mq.store.clear_queue(queue.keys, include_dlq=True) == (1, 0, 0)
    assert await raw.exists(queue.keys.dedup) == 0


async def test_partitioned_sends_route_a_message_id_to_one_partition(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    orders = mq.queue("idem-parts", partitions=4)
    await orders.create()
    first = await orders.send_message({"n": 1}, message_id="order-7")
    for _ in range(6):  # without a key: always order-7's partition, never round-robin
        assert await orders.send_message({"n": 1}, message_id="order-7") == first
    home = orders.partition_for("order-7")
    assert [await raw.xlen(p.stream) for p in orders.partitions] == [
        1 if p is home else 0 for p in orders.partitions
    ]
    # With a key: the key's partition, deduplicated there.
    keyed = await orders.send_message({"n": 2}, key="cust-1", message_id="order-8")
    assert await orders.send_message({"n": 2}, key="cust-1", message_id="order-8") == keyed
    # Bulk: each id to its partition; duplicates in the call and from before write nothing.
    mids = [f"bulk-{i}" for i in range(8)]
    ids = await orders.send_messages(list(range(8)), message_ids=mids)
    again = await orders.send_messages(list(range(9)), message_ids=[*mids, "order-7"])
    assert again == [*ids, first]
    total = sum([await raw.xlen(p.stream) for p in orders.partitions])
    assert total == 1 + 1 + 8
    for mid, sid in zip(mids, ids, strict=True):
        entries = await raw.xrange(orders.partition_for(mid).stream, sid, sid)
        assert len(entries) == 1


async def test_a_durable_send_reports_only_the_stream_ids(
    mq: LeanMQ, queue: Queue, raw: aioredis.Redis
) -> None:
    """With durability the script's reply (ids, then the duplicates' positions) goes
    through WAIT: a NotReplicatedError carries the ids only."""
    wait = Durability(replicas=1, timeout_ms=20)  # a lone server: never confirmed
    with pytest.raises(NotReplicatedError) as info:
        await queue.send_messages([1, 2, 3], message_ids=["a", "b", "a"], durability=wait)
    ids = info.value.stream_ids
    assert len(ids) == 3 and ids[0] == ids[2] != ids[1]
    with pytest.raises(NotReplicatedError) as again:
        await queue.send_message(1, message_id="b", durability=wait)
    assert again.value.stream_ids == [ids[1]]
    assert await raw.xlen(queue.stream) == 2
