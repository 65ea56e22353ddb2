"""The settler alone: buffered acks are never forgotten; a move needs the lease."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ
from leanmq_async.worker.runner import HandlerRunner
from tests.worker_apps.common import events, pending_count, read_as

pytestmark = pytest.mark.anyio


async def _runner(mq: LeanMQ, name: str, **options: Any) -> HandlerRunner:
    queue, _ = await mq.create_queue_pair(name)

    @queue.handler(**options)
    async def handle(data: Any) -> None: ...

    return mq.worker().runners[0]


async def _held(raw: aioredis.Redis, runner: HandlerRunner, n: int) -> list[bytes]:
    """``n`` messages read by the runner's consumer (pending, held by it)."""
    queue = runner.queue
    await queue.send_messages(list(range(n)))
    return [sid for sid, _ in await read_as(raw, runner.group, runner.consumer, runner.stream, n)]


async def test_acks_a_read_took_are_kept_unless_it_surely_ran(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    runner = await _runner(mq, "acks")
    settler = runner.settler
    a, b, c = await _held(raw, runner, 3)
    settler.ack(a)
    settler.ack(b)
    taken = settler.take_acks()
    assert taken == [a, b]
    assert not settler.acks_buffered
    settler.ack(c)
    assert settler.unacked() == {a, b, c}  # under way counts as unacked
    settler.return_acks(taken, sent=False)  # the read failed: unknown whether XACK ran
    assert settler.unacked() == {a, b, c}
    await settler.flush_acks()
    assert not settler.unacked()
    assert await pending_count(raw, runner.stream, runner.group) == 0


async def test_acks_a_read_carried_are_done(mq: LeanMQ, raw: aioredis.Redis) -> None:
    runner = await _runner(mq, "carried")
    settler = runner.settler
    (a,) = await _held(raw, runner, 1)
    settler.ack(a)
    settler.return_acks(settler.take_acks(), sent=True)
    assert not settler.unacked()


async def test_a_retry_needs_the_lease(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "leanmq_async.worker")
    runner = await _runner(mq, "retry")
    settler = runner.settler
    mine, theirs = await _held(raw, runner, 2)
    await raw.xclaim(runner.stream, runner.group, "other", 0, [theirs])
    await settler.retry(mine.decode(), "m1", 1, 0.0, ValueError("boom"))
    await settler.retry(theirs.decode(), "m2", 1, 0.0, ValueError("boom"))
    assert runner.stats.retried == 1
    (retried,) = events(caplog, "retried")
    assert retried.__dict__["error_type"] == "ValueError"
    (lost,) = events(caplog, "lease_lost")
    assert lost.__dict__["id"] == theirs.decode()


async def test_a_dead_letter_move_needs_the_lease(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "leanmq_async.worker")
    runner = await _runner(mq, "dlq")
    settler = runner.settler
    mine, theirs = await _held(raw, runner, 2)
    await raw.xclaim(runner.stream, runner.group, "other", 0, [theirs])
    assert await settler.dead_letter(mine.decode(), "bad", "ValueError", "tb", 3, "m1") == 1
    assert await settler.dead_letter(theirs.decode(), "bad", "ValueError") == 0
    assert runner.stats.dead_lettered == 1
    assert await raw.xlen(runner.queue.dead_letter_queue().stream) == 1
    (moved,) = events(caplog, "dead_lettered")
    assert moved.__dict__["attempts"] == 3
    assert [r.__dict__["id"] for r in events(caplog, "lease_lost")] == [theirs.decode()]


async def test_an_expiry_is_settled_only_if_the_redis_clock_agrees(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "leanmq_async.worker")
    runner = await _runner(mq, "expiry")
    live, gone = await _held(raw, runner, 2)
    now_ms = int(await mq.store.redis_now_ms())
    # The runner's estimate said expired; Redis's clock disagrees: the caller handles it.
    assert not await runner.settler.expire(live.decode(), now_ms + 60_000, "m1")
    assert await runner.settler.expire(gone.decode(), now_ms - 1000, "m2")  # dropped
    assert runner.stats.expired == 1
    assert [r.__dict__["id"] for r in events(caplog, "expired")] == [gone.decode()]
    assert await pending_count(raw, runner.stream, runner.group) == 1
