"""Shared reads (many handlers, :mod:`leanmq_async.worker.read_hub`) with priority levels,
cancellation and periodic jobs: a queue using levels leaves the hub and reads its levels
highest first; the others keep sharing."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import CancelOutcome, LeanMQ, Message
from leanmq_async.priority import split_id
from tests.worker_apps.common import settled, wait_until

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0, "shared_reads": True}


def idle_queues(mq: LeanMQ, seen: list[tuple[str, int]], count: int = 5) -> None:
    for i in range(count):
        name = f"idle{i}"

        @mq.queue(name).handler(concurrency=2)
        async def handle(msg: Message[dict[str, Any]], name: str = name) -> None:
            seen.append((name, split_id(msg.id)[1]))


async def test_levels_under_shared_reads_highest_first(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("mixed")
    order: list[int] = []
    seen: list[tuple[str, int]] = []

    @queue.handler(concurrency=1)
    async def handle(msg: Message[dict[str, Any]]) -> None:
        order.append(split_id(msg.id)[1])

    idle_queues(mq, seen)
    await mq.create_queue_pair("mixed")
    await queue.send_messages([{}] * 5)
    await queue.send_messages([{}] * 5, priority="low")
    await queue.send_messages([{}] * 5, priority="high")
    async with mq.worker(**FAST) as worker:
        assert worker.hub is not None
        await wait_until(lambda: len(order) >= 15, what="15 handled")
        await mq.queue("idle1").send_message({})  # a plain queue still shares reads
        await wait_until(lambda: ("idle1", 1) in seen, what="a plain message via the hub")
        with anyio.fail_after(5):  # a hub member's first level message: noticed by the scan
            await mq.queue("idle0").send_message({}, priority="high")
            await wait_until(lambda: ("idle0", 2) in seen, what="the high one")
        # A delayed low message of a queue in the hub: the shared mover covers its level.
        await mq.queue("idle2").send_message({}, priority="low", delay=0.2)
        await wait_until(lambda: ("idle2", 0) in seen, what="the delayed low one")
        await mq.queue("idle0").send_message({})
        await wait_until(lambda: seen.count(("idle0", 1)) == 1, what="idle0's plain one")
        member = {m.stream: m for m in worker.hub.members}
        assert member[queue.stream].levels and member[mq.queue("idle0").stream].levels
        assert not member[mq.queue("idle1").stream].levels
        assert not member[mq.queue("idle1").stream].stopped
    assert order == [2] * 5 + [1] * 5 + [0] * 5
    assert sorted(seen) == [("idle0", 1), ("idle0", 2), ("idle1", 1), ("idle2", 0)]
    for level in (0, 1, 2):
        assert await settled(raw, queue.keys.at(level).stream, queue.consumer_group)


async def test_a_running_level_message_is_cancelled_under_shared_reads(mq: LeanMQ) -> None:
    queue = mq.queue("c")
    started: list[str] = []
    finished: list[str] = []
    idle_queues(mq, [])

    @queue.handler(concurrency=2)
    async def handle(msg: Message[dict[str, Any]]) -> None:
        started.append(msg.id)
        await anyio.sleep(30)
        finished.append(msg.id)

    await mq.create_queue_pair("c")
    async with mq.worker(**FAST) as worker:
        assert worker.hub is not None
        mid = await queue.send_message({"k": 1}, priority="high")
        await wait_until(lambda: started == [mid], within=5, what="the high one runs")
        assert await queue.cancel(mid) is CancelOutcome.RUNNING
        await wait_until(lambda: worker.stats.dead_lettered == 1, within=5, what="cancelled")
    assert finished == []
    assert (await queue.get_info()).pending_messages == 0


async def test_cron_jobs_run_under_shared_reads(mq: LeanMQ) -> None:
    runs: list[int] = []
    idle_queues(mq, [])

    @mq.cron(every=1)
    async def tick() -> None:
        runs.append(1)

    async with mq.worker(**FAST) as worker:
        assert worker.hub is not None
        await wait_until(lambda: len(runs) >= 2, within=10, what="two runs")
