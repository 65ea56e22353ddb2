"""Transactions: every send of the block is written at the end, all of it or none of it."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import (
    LeanMQ,
    MessageEncodeError,
    MessageTooLargeError,
    Queue,
    RedisOperationError,
    Transaction,
    TransactionError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def queues(mq: LeanMQ) -> tuple[Queue, Queue]:
    (a, _), (b, _) = await mq.create_queue_pair("tx-a"), await mq.create_queue_pair("tx-b")
    return a, b


async def nothing_written(raw: aioredis.Redis, *queues: Queue) -> bool:
    for q in queues:
        if await raw.xlen(q.stream) or await raw.exists(
            q.keys.expiry, q.keys.delayed, q.keys.delayed_data
        ):
            return False
    return True


async def test_commit_writes_everything(
    mq: LeanMQ, queues: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    a, b = queues
    async with mq.transaction() as tx:
        assert isinstance(tx, Transaction)
        m1 = tx.send_message(a, {"n": 1}, message_id="first")
        m2 = tx.send_message(b, {"n": 2}, ttl=60, headers={"h": "v"})
        m3 = tx.send_message(a, {"n": 3}, delay=60)
        assert "open" in repr(tx) and "sends=3" in repr(tx)
        # Nothing is visible before the block ends.
        assert await nothing_written(raw, a, b)
    assert tx.committed and "committed" in repr(tx)
    assert m1 == "first"
    assert tx.message_ids == [m1, m2, m3]
    assert len(tx.stream_ids) == 3
    (got_a,) = await a.get_messages(count=5)
    (got_b,) = await b.get_messages(count=5)
    assert (got_a.id, got_a.data, got_a.message_id) == (tx.stream_ids[0], {"n": 1}, "first")
    assert (got_b.id, got_b.data, got_b.headers) == (tx.stream_ids[1], {"n": 2}, {"h": "v"})
    assert got_b.expires_at is not None
    assert await raw.zcard(b.keys.expiry) == 1
    assert (await a.get_info()).delayed_messages == 1


async def test_block_that_raises_writes_nothing(
    mq: LeanMQ, queues: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    a, b = queues
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with mq.transaction() as tx:
            tx.send_message(a, 1)
            tx.send_message(b, 2, ttl=5)
            tx.send_message(a, 3, delay=5)
            raise RuntimeError("changed my mind")
    assert not tx.committed
    assert tx.stream_ids == []
    assert await nothing_written(raw, a, b)


async def test_cancelled_block_writes_nothing(
    mq: LeanMQ, queues: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    a, _ = queues
    with anyio.move_on_after(0.05):
        async with mq.transaction() as tx:
            tx.send_message(a, 1)
            await anyio.sleep(10)
    assert not tx.committed
    assert await nothing_written(raw, a)


async def test_wrong_key_type_fails_the_whole_commit(
    mq: LeanMQ, queues: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    a, b = queues
    await raw.delete(b.stream)
    await raw.set(b.stream, "x")
    with pytest.raises(TransactionError, match="nothing was written") as info:
        async with mq.transaction() as tx:
            tx.send_message(a, 1)
            tx.send_message(a, 2, ttl=60)
            tx.send_message(a, 3, delay=60)
            tx.send_message(b, 4)
    assert "WRONGTYPE" in str(info.value)
    assert tx.stream_ids == []
    assert await nothing_written(raw, a)
    assert await raw.get(b.stream) == b"x"


MAX_ID = "18446744073709551615-18446744073709551615"


async def exhaust(raw: aioredis.Redis, queue: Queue) -> None:
    """Make ``XADD <stream> *`` fail inside the script, after its type checks passed."""
    await raw.xadd(queue.stream, {"filler": "1"}, id=MAX_ID)
    await raw.xdel(queue.stream, MAX_ID)  # empty again; its last id stays the largest


async def test_a_failing_xadd_undoes_the_writes_before_it(
    mq: LeanMQ, queues: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    a, b = queues
    await exhaust(raw, b)
    with pytest.raises(TransactionError, match="nothing was written"):
        async with mq.transaction() as tx:
            tx.send_message(a, 1)
            tx.send_message(a, 2, ttl=60)
            tx.send_message(a, 3, delay=60)
            tx.send_message(b, 4)
    assert tx.stream_ids == []
    assert await nothing_written(raw, a, b)
    assert await a.get_messages(count=5) == []
    # A stream the failed batch would have created is not left behind, empty.
    fresh = mq.queue("tx-fresh")
    with pytest.raises(TransactionError, match="nothing was written"):
        async with mq.transaction() as tx:
            tx.send_message(fresh, 1)
            tx.send_message(b, 2)
    assert await raw.exists(fresh.stream) == 0


async def test_a_failing_xadd_undoes_a_send_messages_batch(
    mq: LeanMQ, queues: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    a, b = queues
    await exhaust(raw, b)
    ops = [a._send_op(n, None, 60, None, None)[0] for n in range(3)]
    ops += [b._send_op(9, None, None, None, None)[0]]
    with pytest.raises(RedisOperationError, match="nothing of this batch was written"):
        await mq.store.send(ops)
    assert await nothing_written(raw, a, b)
    with pytest.raises(RedisOperationError, match="nothing of this batch was written"):
        await b.send_messages([1, 2], ttl=60)
    assert await nothing_written(raw, b)
    # Delayed sends do not need the stream: they are written.
    assert len(await b.send_messages([1, 2], delay=60)) == 2


@pytest.mark.parametrize("broken", ["expiry", "delayed", "delayed_data"])
async def test_any_wrong_typed_key_fails_the_commit(
    mq: LeanMQ, queues: tuple[Queue, Queue], raw: aioredis.Redis, broken: str
) -> None:
    a, b = queues
    await raw.set(getattr(b.keys, broken), "x")
    with pytest.raises(TransactionError):
        async with mq.transaction() as tx:
            tx.send_message(a, 1, ttl=60)
            tx.send_message(b, 2)
    assert await raw.xlen(a.stream) == 0
    assert await raw.xlen(b.stream) == 0
    assert await raw.exists(a.keys.expiry) == 0


async def test_bad_payload_fails_at_send_and_the_rest_can_commit(
    mq: LeanMQ, queues: tuple[Queue, Queue]
) -> None:
    a, _ = queues
    async with mq.transaction() as tx:
        tx.send_message(a, "ok")
        with pytest.raises(MessageEncodeError):
            tx.send_message(a, object())
        with pytest.raises(MessageTooLargeError):
            tx.send_message(a, "x" * 2_000_000)
    assert len(tx.stream_ids) == 1
    assert [m.data for m in await a.get_messages(count=5)] == ["ok"]


async def test_bad_payload_raised_out_of_the_block_writes_nothing(
    mq: LeanMQ, queues: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    a, _ = queues
    with pytest.raises(MessageEncodeError):
        async with mq.transaction() as tx:
            tx.send_message(a, "ok")
            tx.send_message(a, object())
    assert await nothing_written(raw, a)


async def test_empty_transaction(mq: LeanMQ) -> None:
    async with mq.transaction() as tx:
        pass
    assert tx.committed
    assert tx.stream_ids == []


async def test_a_transaction_commits_once(mq: LeanMQ, queues: tuple[Queue, Queue]) -> None:
    a, _ = queues
    async with mq.transaction() as tx:
        tx.send_message(a, 1)
    with pytest.raises(TransactionError, match="already committed"):
        tx.send_message(a, 2)
    with pytest.raises(TransactionError, match="already committed"):
        await tx.commit()
    assert (await a.get_info()).message_count == 1


async def test_unreachable_redis_is_a_transaction_error() -> None:
    async with LeanMQ("redis://127.0.0.1:1") as mq:
        with pytest.raises(TransactionError):
            async with mq.transaction() as tx:
                tx.send_message(mq.queue("x"), 1)


async def test_many_sends_in_one_transaction(mq: LeanMQ, queues: tuple[Queue, Queue]) -> None:
    a, b = queues
    async with mq.transaction() as tx:
        for i in range(300):
            tx.send_message(a if i % 2 else b, i)
    assert len(tx.stream_ids) == 300
    assert [m.data for m in await a.get_messages(count=500)] == list(range(1, 300, 2))
    assert [m.data for m in await b.get_messages(count=500)] == list(range(0, 300, 2))
