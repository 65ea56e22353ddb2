"""The fetcher alone: reads carry buffered acks, a stop ends a blocking read, and the
reclaim loop never runs twice what this worker still holds or has handled."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ
from leanmq_async.worker.runner import HandlerRunner
from tests.worker_apps.common import pending_count, read_as, wait_until

pytestmark = pytest.mark.anyio


async def _runner(mq: LeanMQ, name: str, **settings: Any) -> HandlerRunner:
    queue, _ = await mq.create_queue_pair(name)

    @queue.handler(concurrency=4, visibility_timeout=0.05)
    async def handle(data: Any) -> None: ...

    return mq.worker(**settings).runners[0]


async def test_a_read_carries_the_buffered_acks(mq: LeanMQ, raw: aioredis.Redis) -> None:
    runner = await _runner(mq, "carry", block_ms=50)
    await runner.queue.send_message("done")
    ((done, _),) = await read_as(raw, runner.group, runner.consumer, runner.stream, 1)
    runner.settler.ack(done)
    await runner.queue.send_message("new")
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.fetcher.fetch_loop)  # no acker runs: only the read can ack
        await wait_until(lambda: runner.stats.received == 1, what="the read")
        runner.stop_fetching()
    assert not runner.settler.unacked()
    assert await pending_count(raw, runner.stream, runner.group) == 1  # "new" only
    assert len(runner.state.work) == 1
    assert runner.state.slots.free == 3


async def test_stopping_ends_a_blocking_read_at_once(mq: LeanMQ) -> None:
    runner = await _runner(mq, "block", block_ms=60_000)
    with anyio.fail_after(10):  # a bound, not a measurement: the read blocks for 60 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.fetcher.fetch_loop)
            await wait_until(lambda: runner.fetcher._read_scope is not None, what="a read")
            runner.stop_fetching()
    assert runner.state.slots.free == 4
    assert runner.stats.received == 0


async def test_the_reclaim_loop_skips_what_is_in_flight_and_acks_what_was_handled(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    runner = await _runner(mq, "reclaim", reclaim_interval=0.01)
    await runner.queue.send_messages(["running", "handled", "abandoned"])
    entries = await read_as(raw, runner.group, "dead", runner.stream, 3)
    (running, _), (handled, _), (abandoned, _) = entries
    state = runner.state
    state.slots.free -= 1  # "running" holds a slot: its lease ran out while it ran
    state.in_flight.add(running)
    runner.settler.ack(handled)  # handled; its ack not written yet
    await anyio.sleep(0.1)  # past the 50 ms lease
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.fetcher.reclaim_loop)  # no acker runs: the ack stays buffered
        await wait_until(lambda: runner.stats.reclaimed == 1, what="the reclaim")
        runner.stop_fetching()
    assert state.in_flight == {running, abandoned}
    assert len(state.work) == 1  # "abandoned" only: neither is run twice
    assert state.slots.free == 2
    await runner.settler.flush_acks()
    assert await pending_count(raw, runner.stream, runner.group) == 2
