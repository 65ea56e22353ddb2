"""Stopping a worker: the graceful drain, the grace period running out, cancellation from
outside, and burst mode stopping by itself."""

from __future__ import annotations

from functools import partial

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Message
from tests.worker_apps.common import (
    blocked_readers,
    group_info,
    pending_count,
    read_as,
    settled,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def test_stop_lets_in_flight_handlers_finish_and_reads_nothing_more(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("drain")
    release = anyio.Event()
    started: list[int] = []
    finished: list[int] = []

    @queue.handler(concurrency=64)
    async def handle(data: int) -> None:
        started.append(data)
        await release.wait()
        finished.append(data)

    # A long blocking read: stop() must abandon it rather than wait for it to time out.
    worker = mq.worker(block_ms=20_000, grace_period=30)
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.serve)
            await queue.send_messages(list(range(50)))
            await wait_until(lambda: len(started) == 50, what="50 handlers in flight")
            await wait_until(lambda: _blocked_is(raw, 1), what="the fetch loop blocking")
            worker.stop()
            await wait_until(lambda: _blocked_is(raw, 0), what="the blocking read abandoned")
            late = await queue.send_messages(list(range(50, 60)))
            await anyio.sleep(0.2)
            assert len(started) == 50
            assert worker.stats.handled == 0
            release.set()
    assert sorted(finished) == list(range(50))
    assert worker.stats.handled == 50
    assert worker.stats.received == 50
    info = await group_info(raw, queue.stream, queue.consumer_group)
    assert info["pending"] == 0  # all 50 acked before serve() returned
    assert info["lag"] == len(late)  # the ten sent after stop() were never read
    assert info["last-delivered-id"].decode() < late[0]


async def _blocked_is(raw: aioredis.Redis, n: int) -> bool:
    return await blocked_readers(raw) == n


async def test_grace_period_over_cancels_handlers_and_leaves_messages_pending(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("stuck")
    started: list[int] = []
    cancelled: list[int] = []

    @queue.handler(concurrency=5, visibility_timeout=60)
    async def handle(data: int) -> None:
        started.append(data)
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(data)
            raise

    await queue.send_messages(list(range(8)))
    worker = mq.worker(block_ms=100, grace_period=0.2)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(worker.serve)
            await wait_until(lambda: len(started) == 5, what="five in flight")
            worker.stop()
    assert sorted(cancelled) == sorted(started)
    assert len(started) == 5
    assert await pending_count(raw, queue.stream, queue.consumer_group) == 5
    info = await group_info(raw, queue.stream, queue.consumer_group)
    assert info["entries-read"] == 5
    assert info["lag"] == 3
    stats = worker.stats
    assert (stats.handled, stats.failed, stats.retried, stats.dead_lettered) == (0, 0, 0, 0)
    assert await raw.xlen(queue.dead_letter_queue().stream) == 0
    assert await raw.zcard(queue.keys.delayed) == 0


async def test_cancelling_run_worker_shuts_down_gracefully(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("cancelled")
    started: list[int] = []
    finished: list[int] = []

    @queue.handler(concurrency=3)
    async def handle(message: Message[int]) -> None:
        started.append(message.data)
        await anyio.sleep(0.3)
        finished.append(message.data)

    await queue.send_messages(list(range(3)))
    with anyio.fail_after(15):
        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as tg:
                await tg.start(partial(mq.run_worker, block_ms=100, grace_period=10))
                await wait_until(lambda: len(started) == 3, what="three in flight")
                outer.cancel()
        assert outer.cancelled_caught
    # The handlers were not cancelled: they finished within the grace period, and were acked.
    assert sorted(finished) == [0, 1, 2]
    assert await settled(raw, queue.stream, queue.consumer_group)
    # Nothing keeps reading after the cancelled worker returned.
    await queue.send_message(99)
    await anyio.sleep(0.3)
    assert sorted(started) == [0, 1, 2]
    assert (await group_info(raw, queue.stream, queue.consumer_group))["lag"] == 1


async def test_burst_mode_drains_everything_then_stops(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("burst")
    calls: list[tuple[int, int]] = []

    def soon(_retry: int) -> float:
        return 0.2

    @queue.handler(concurrency=4, backoff=soon)
    async def handle(message: Message[int]) -> None:
        calls.append((message.data, message.attempt))
        if message.data == 7 and message.attempt < 3:
            raise RuntimeError("flaky")

    await queue.send_messages(list(range(20)))
    with anyio.fail_after(20):
        await mq.run_worker(burst=True, block_ms=50, maintenance_interval=0.05)
    assert sorted(calls) == sorted([(i, 1) for i in range(20)] + [(7, 2), (7, 3)])
    assert await settled(raw, queue.stream, queue.consumer_group)
    assert await raw.zcard(queue.keys.delayed) == 0


async def test_a_burst_worker_stopped_before_its_drain_ends_still_stops(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    # Stopping a burst worker early used to hang: the supervisor kept waiting for the end
    # of a drain that the stop had cut short. (Leaving the block waits for the drain.)
    queue = mq.queue("burst-early")
    handled: list[int] = []
    ten = anyio.Event()

    @queue.handler(concurrency=2)
    async def handle(data: int) -> None:
        handled.append(data)
        if len(handled) == 10:
            ten.set()
        await anyio.sleep(0.01)

    await queue.send_messages(list(range(200)))
    with anyio.fail_after(15):  # a hang guard, not a timing check
        async with mq.worker(burst=True, block_ms=50) as worker:
            await ten.wait()
            worker.stop()
    assert 10 <= len(handled) < 200
    assert worker.stats.handled == len(handled)
    # What was not handled is still there for the next worker, nothing left pending.
    info = await raw.xinfo_groups(queue.stream)
    assert info[0]["pending"] == 0
    assert info[0]["lag"] == 200 - len(handled)


async def test_burst_is_not_done_while_anything_is_unread_pending_or_delayed(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    # The check the fetch loop makes after an empty read. A retry moved into the stream
    # just after that read is unread, neither pending nor delayed: not done yet.
    queue, _ = await mq.create_queue_pair("tail")

    @queue.handler
    async def handle(data: object) -> None: ...

    (runner,) = mq.worker(burst=True).runners
    assert await runner.fetcher.nothing_left()
    await queue.send_message("retry copy")
    assert not await runner.fetcher.nothing_left()  # unread
    ((sid, _),) = await read_as(raw, queue.consumer_group, "c", queue.stream, 1)
    assert not await runner.fetcher.nothing_left()  # pending
    await raw.xack(queue.stream, queue.consumer_group, sid)
    assert await runner.fetcher.nothing_left()
    await queue.send_message("later", delay=60)
    assert not await runner.fetcher.nothing_left()  # delayed


async def test_a_worker_serves_once(mq: LeanMQ) -> None:
    queue = mq.queue("once")

    @queue.handler
    async def handle(data: object) -> None: ...

    worker = mq.worker(block_ms=50)
    async with worker:
        health = await worker.health()
        assert health["worker"]["running"] is True
        assert health["worker"]["stopping"] is False
        with pytest.raises(RuntimeError, match="served once"):
            await worker.serve()
    health = await worker.health()
    assert health["worker"]["running"] is False
    assert health["worker"]["stopping"] is True
