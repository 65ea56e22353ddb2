"""Recovery alone: own pending messages at start, a missing group, an outage's log lines."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, LeanMQConnectionError, LeanMQError
from leanmq_async.worker.runner import HandlerRunner
from tests.worker_apps.common import events, read_as

pytestmark = pytest.mark.anyio


async def _runner(mq: LeanMQ, name: str, **settings: Any) -> HandlerRunner:
    queue, _ = await mq.create_queue_pair(name)

    @queue.handler(concurrency=4)
    async def handle(data: Any) -> None: ...

    return mq.worker(**settings).runners[0]


async def test_own_pending_messages_are_handed_to_the_processors_at_start(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "leanmq_async.worker")
    runner = await _runner(mq, "own")
    await runner.queue.send_messages(list(range(5)))
    mine = await read_as(raw, runner.group, runner.consumer, runner.stream, 3)
    await read_as(raw, runner.group, "someone-else", runner.stream, 2)
    await runner.recovery.recover_own_pending()
    state = runner.state
    assert state.in_flight == {sid for sid, _ in mine}
    assert len(state.work) == 3
    assert state.slots.free == 1  # 4 slots, 3 taken
    (recovered,) = events(caplog, "recovered_pending")
    assert recovered.__dict__["count"] == 3


async def test_a_missing_group_is_created_again(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    runner = await _runner(mq, "gone")
    await raw.delete(runner.stream)
    with pytest.raises(LeanMQError) as failed:
        await mq.store.read_group(runner.stream, runner.group, runner.consumer, 1, 0)
    await runner.recovery.on_redis_error(failed.value, 1)
    assert events(caplog, "group_created")
    groups = await raw.xinfo_groups(runner.stream)
    assert runner.group in {g["name"].decode() for g in groups}
    dlq = runner.queue.dead_letter_queue()
    assert await raw.exists(dlq.stream)


async def test_an_outage_is_logged_once_and_its_end_once(
    mq: LeanMQ, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "leanmq_async.worker")
    runner = await _runner(mq, "outage")
    recovery = runner.recovery
    runner.state.stop()  # the pauses end at once
    for failures in (1, 2, 3):
        await recovery.on_redis_error(LeanMQConnectionError("connection refused"), failures)
    assert recovery.redis_down
    recovery.on_redis_back()
    recovery.on_redis_back()
    assert len(events(caplog, "redis_unavailable")) == 1
    assert len(events(caplog, "redis_reconnected")) == 1
    assert not events(caplog, "fetch_failed")
