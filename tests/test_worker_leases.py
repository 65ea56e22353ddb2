"""The lease keeper alone: leases of messages in flight are extended; a lost one is seen."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ
from leanmq_async.worker.runner import HandlerRunner
from leanmq_async.worker.state import Work
from tests.worker_apps.common import events, read_as, wait_until

pytestmark = pytest.mark.anyio


async def _runner(mq: LeanMQ, name: str) -> HandlerRunner:
    queue, _ = await mq.create_queue_pair(name)

    @queue.handler(visibility_timeout=0.3)
    async def handle(data: Any) -> None: ...

    return mq.worker().runners[0]


async def test_a_message_waiting_long_is_run_only_if_still_held(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    runner = await _runner(mq, "held")
    await runner.queue.send_messages(["a", "b"])
    entries = await read_as(raw, runner.group, runner.consumer, runner.stream, 2)
    (mine, f1), (theirs, f2) = entries
    await raw.xclaim(runner.stream, runner.group, "other", 0, [theirs])
    assert await runner.leases.still_held(Work(mine, f1, 1, time.monotonic()))
    assert not await runner.leases.still_held(Work(theirs, f2, 1, time.monotonic()))
    (lost,) = events(caplog, "lease_lost")
    assert lost.__dict__["id"] == theirs.decode()
    assert "skipped" in lost.__dict__["detail"]


async def test_the_keeper_extends_the_leases_of_messages_in_flight(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "leanmq_async.worker")
    runner = await _runner(mq, "keep")  # built after the level is set: it logs at DEBUG
    await runner.queue.send_messages(["a", "b"])
    (mine, _), (theirs, _) = await read_as(raw, runner.group, runner.consumer, runner.stream, 2)
    await raw.xclaim(runner.stream, runner.group, "other", 0, [theirs])
    runner.state.in_flight.update({mine, theirs})
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.leases.run)
        await wait_until(
            lambda: bool(events(caplog, "lease_extended")), within=10, what="an extension"
        )
        tg.cancel_scope.cancel()
    assert events(caplog, "lease_extended")[0].__dict__["count"] == 1
    assert events(caplog, "lease_lost")[0].__dict__["count"] == 1
