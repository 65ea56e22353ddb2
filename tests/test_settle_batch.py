"""Settling calls made at once share a pipeline; each gets its own reply; none waits forever."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, LeanMQConnectionError, RedisOperationError
from leanmq_async.queue import Queue
from leanmq_async.testing import RedisServer
from leanmq_async.worker.settle_batch import SettleBatcher
from tests.reliability.proxy import Proxy

pytestmark = pytest.mark.anyio

CONSUMER = "settler"


async def _pending(mq: LeanMQ, name: str, n: int) -> tuple[Queue, list[str]]:
    queue, _ = await mq.create_queue_pair(name)
    await queue.send_messages(list(range(n)))
    messages = await queue.get_messages(count=n, consumer_id=CONSUMER)
    assert len(messages) == n
    return queue, [m.id for m in messages]


def _dead_letter(mq: LeanMQ, queue: Queue, sid: str) -> object:
    item = (sid, "bad", "ValueError", "tb", 1)
    return mq.store.dead_letter_call(queue.keys, queue.consumer_group, CONSUMER, queue.name, item)


async def test_calls_made_at_once_share_connections_and_get_their_own_replies(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, ids = await _pending(mq, "batch", 61)
    batcher = SettleBatcher(mq.store)
    results: dict[str, int] = {}
    pool = mq.redis.connection_pool
    before = len(pool._available_connections) + len(pool._in_use_connections)  # type: ignore[attr-defined]

    async def settle(kind: str, sid: str) -> None:
        if kind == "dlq":
            call = _dead_letter(mq, queue, sid)
        else:
            call = mq.store.retry_call(queue.keys, queue.consumer_group, CONSUMER, sid, 0, 1)
        results[f"{kind} {sid}"] = await batcher.call(call)  # type: ignore[arg-type]

    async with anyio.create_task_group() as tg:
        for sid in ids[:50]:
            tg.start_soon(settle, "dlq", sid)
        for sid in ids[50:60]:
            tg.start_soon(settle, "retry", sid)
        # Not owned by this consumer any more: the script refuses it (0), the rest go on.
        await raw.xack(queue.stream, queue.consumer_group, ids[60])
        tg.start_soon(settle, "dlq", ids[60])

    assert [results[f"dlq {s}"] for s in ids[:50]] == [1] * 50
    assert [results[f"retry {s}"] for s in ids[50:60]] == [1] * 10
    assert results[f"dlq {ids[60]}"] == 0
    assert await raw.xlen(queue.keys.dlq) == 50
    assert (await raw.xpending(queue.stream, queue.consumer_group))["pending"] == 0
    assert await raw.xlen(queue.stream) == 61 + 10  # the retries were re-added
    # 61 concurrent calls, one pipeline: the pool did not grow by a connection per call.
    after = len(pool._available_connections) + len(pool._in_use_connections)  # type: ignore[attr-defined]
    assert after - before <= 1


async def test_a_failing_call_fails_alone(mq: LeanMQ, raw: aioredis.Redis) -> None:
    good, ids = await _pending(mq, "good", 3)
    bad = mq.queue("bad")
    await raw.set(bad.keys.dlq, "not a stream")
    batcher = SettleBatcher(mq.store)
    outcomes: list[object] = []

    async def settle(queue: Queue, sid: str) -> None:
        try:
            outcomes.append(await batcher.call(_dead_letter(mq, queue, sid)))  # type: ignore[arg-type]
        except RedisOperationError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(settle, good, ids[0])
        tg.start_soon(settle, bad, "1-1")
        tg.start_soon(settle, good, ids[1])
        tg.start_soon(settle, good, ids[2])
    assert sorted(o for o in outcomes if isinstance(o, int)) == [1, 1, 1]
    (error,) = [o for o in outcomes if isinstance(o, RedisOperationError)]
    assert "WRONGTYPE" in str(error) or "wrong" in str(error).lower()
    assert await raw.xlen(good.keys.dlq) == 3


async def test_a_leader_that_gives_up_leaves_no_call_waiting(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    with Proxy(redis_server.port) as proxy:
        async with LeanMQ(proxy.url, prefix=prefix) as mq:
            queue, ids = await _pending(mq, "slow", 20)
            batcher = SettleBatcher(mq.store)
            answered: dict[str, int] = {}
            abandoned: list[str] = []

            async def settle(sid: str, give_up_after: float | None = None) -> None:
                try:
                    with anyio.move_on_after(give_up_after or 60):
                        answered[sid] = await batcher.call(_dead_letter(mq, queue, sid))  # type: ignore[arg-type]
                except LeanMQConnectionError:
                    abandoned.append(sid)

            proxy.delay(0.5)  # every reply now takes half a second
            with anyio.fail_after(30):  # a hang guard, not a timing check
                async with anyio.create_task_group() as tg:
                    tg.start_soon(settle, ids[0], 0.1)  # the leader, gives up mid-batch
                    for sid in ids[1:5]:  # in the leader's batch
                        tg.start_soon(settle, sid)
                    await anyio.sleep(0.03)
                    for sid in ids[5:]:  # queued behind it: the lead must pass to them
                        tg.start_soon(settle, sid)
            proxy.delay(0)
            # Every caller came back: answered, or told to retry (never left waiting).
            assert ids[0] not in answered
            assert set(abandoned) == set(ids[1:5])
            assert set(answered) == set(ids[5:])
            assert set(answered.values()) == {1}
            # Retrying the abandoned ones settles them; nothing is moved twice.
            with anyio.fail_after(30):
                for sid in [ids[0], *abandoned]:
                    answered[sid] = await batcher.call(_dead_letter(mq, queue, sid))  # type: ignore[arg-type]
    assert await raw.xlen(queue.keys.dlq) == 20
    dlq_ids = [f[b"dlq.id"] for _, f in await raw.xrange(queue.keys.dlq)]
    assert sorted(dlq_ids) == sorted(s.encode() for s in ids)
