"""Caller-sized lists: every script and worker step works on >= 10,000 ids (Lua's
``unpack`` fails at ~8,000, so they work in bounded batches), and a large idle backlog
is reclaimed in one scan, not ``concurrency`` entries per reclaim interval."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Message
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import pending_count, settled, wait_until

pytestmark = pytest.mark.anyio

MANY = 10_000
FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


async def _pending_for(raw: aioredis.Redis, stream: str, group: str, consumer: str) -> list[str]:
    """Make every entry of ``stream`` pending for ``consumer`` (a worker that died)."""
    ids: list[str] = []
    while True:
        reply = await raw.xreadgroup(group, consumer, {stream: ">"}, count=5000)
        if not reply:
            return ids
        ids += [sid.decode() for sid, _ in reply[0][1]]


async def test_send_move_to_dlq_and_requeue_10000_ids(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue, dlq = await mq.create_queue_pair("bulk")
    ids = await queue.send_messages(list(range(MANY)), ttl=600)
    assert len(ids) == MANY
    assert await _pending_for(raw, queue.stream, queue.consumer_group, "gone") == ids
    assert len(await queue.move_to_dlq(ids, "bulk move")) == MANY
    assert await pending_count(raw, queue.stream, queue.consumer_group) == 0
    dlq_ids = [sid.decode() for sid, _ in await raw.xrange(dlq.stream)]
    assert len(dlq_ids) == MANY
    assert await dlq.requeue_messages(dlq_ids) == MANY
    assert await raw.xlen(dlq.stream) == 0


async def test_extend_leases_of_10000_ids(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue, _ = await mq.create_queue_pair("leases")
    await queue.send_messages(list(range(MANY)))
    ids = await _pending_for(raw, queue.stream, queue.consumer_group, "me")
    lost = await mq.store.extend_leases(queue.stream, queue.consumer_group, "me", ids)
    assert lost == []
    lost = await mq.store.extend_leases(queue.stream, queue.consumer_group, "other", ids)
    assert len(lost) == MANY


async def test_reclaim_of_10000_idle_entries_by_a_worker_with_large_concurrency(
    redis_server: RedisServer, mq: LeanMQ, raw: aioredis.Redis, prefix: str
) -> None:
    queue, _ = await mq.create_queue_pair("backlog")
    await queue.send_messages(list(range(MANY)))
    await _pending_for(raw, queue.stream, queue.consumer_group, "dead-worker")
    seen: set[int] = set()

    @queue.handler(visibility_timeout=0.5, concurrency=MANY + 500)
    async def handle(message: Message[int]) -> None:
        seen.add(message.data)

    async with mq.worker(**FAST, reclaim_interval=0.2) as worker:
        await wait_until(lambda: len(seen) == MANY, within=120, what="backlog reclaimed")
        await wait_until(
            lambda: settled(raw, queue.stream, queue.consumer_group), within=30, what="acks"
        )
    assert worker.stats.reclaimed == MANY


async def test_start_up_recovers_10000_own_pending_entries(
    redis_server: RedisServer, raw: aioredis.Redis, prefix: str
) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix, consumer_name="node-1") as mq:
        queue, _ = await mq.create_queue_pair("own")
        await queue.send_messages(list(range(MANY)))
        # A previous run of this consumer name read them all and died.
        await _pending_for(raw, queue.stream, queue.consumer_group, "node-1")
        seen: set[int] = set()

        @queue.handler(visibility_timeout=600, concurrency=MANY + 500)
        async def handle(message: Message[int]) -> None:
            seen.add(message.data)

        async with mq.worker(**FAST):
            await wait_until(lambda: len(seen) == MANY, within=120, what="own pending handled")
            await wait_until(
                lambda: settled(raw, queue.stream, queue.consumer_group), within=30, what="acks"
            )


async def test_idle_backlog_larger_than_concurrency_is_reclaimed_in_one_scan(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = await mq.create_queue_pair("slow-reclaim")
    total = 60
    await queue.send_messages(list(range(total)))
    await _pending_for(raw, queue.stream, queue.consumer_group, "dead-worker")
    seen: set[int] = set()

    @queue.handler(visibility_timeout=0.3, concurrency=2)
    async def handle(message: Message[int]) -> None:
        seen.add(message.data)

    async with mq.worker(**FAST, reclaim_interval=0.5) as worker:
        await wait_until(lambda: len(seen) == total, within=60, what="backlog reclaimed")
        scans = worker.runners[0].reclaim_scans
    # One batch of `concurrency` per interval would need total / 2 = 30 scans.
    assert scans <= 3, f"{total} idle entries took {scans} reclaim scans"
    assert worker.stats.reclaimed == total
