"""The executor alone: each kind of work item ends in the settling it calls for."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Reject, Retry
from leanmq_async.testing import RedisServer
from leanmq_async.worker.executor import traceback_summary
from leanmq_async.worker.runner import HandlerRunner
from leanmq_async.worker.state import Work
from tests.worker_apps.common import events, pending_count, read_as

pytestmark = pytest.mark.anyio


async def _runner(
    mq: LeanMQ, name: str, outcome: BaseException | None = None, **options: Any
) -> tuple[HandlerRunner, list[Any]]:
    queue, _ = await mq.create_queue_pair(name)
    calls: list[Any] = []

    @queue.handler(**options)
    async def handle(data: Any) -> None:
        calls.append(data)
        if outcome is not None:
            raise outcome

    return mq.worker().runners[0], calls


async def _work(raw: aioredis.Redis, runner: HandlerRunner, data: Any, deliveries: int = 1) -> Work:
    await runner.queue.send_message(data)
    ((sid, fields),) = await read_as(raw, runner.group, runner.consumer, runner.stream, 1)
    return Work(sid, fields, deliveries, time.monotonic())


async def _dlq_reasons(raw: aioredis.Redis, runner: HandlerRunner) -> list[str]:
    entries = await raw.xrange(runner.queue.dead_letter_queue().stream)
    return [fields[b"dlq.error"].decode() for _, fields in entries]


async def test_a_handled_message_is_acked(mq: LeanMQ, raw: aioredis.Redis) -> None:
    runner, calls = await _runner(mq, "ok")
    work = await _work(raw, runner, {"n": 1})
    await runner.executor.process(work)
    assert calls == [{"n": 1}]
    assert runner.settler.unacked() == {work.sid}
    assert runner.stats.handled == 1


async def test_an_entry_for_another_group_is_acked_unhandled(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    runner, calls = await _runner(mq, "foreign")
    work = await _work(raw, runner, "x")
    assert work.fields is not None
    work.fields[b"g"] = b"billing"
    await runner.executor.process(work)
    assert calls == []
    assert runner.settler.unacked() == {work.sid}


async def test_bad_entries_and_too_many_deliveries_are_dead_lettered_unhandled(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    runner, calls = await _runner(mq, "bad", max_deliveries=3)
    undecodable = await _work(raw, runner, "x")
    undecodable.fields = {b"junk": b"1"}
    await runner.executor.process(undecodable)
    await runner.executor.process(await _work(raw, runner, "y", deliveries=4))
    assert calls == []
    assert await _dlq_reasons(raw, runner) == ["MessageDecodeError", "MaxDeliveriesExceeded"]
    assert await pending_count(raw, runner.stream, runner.group) == 0


@pytest.mark.parametrize(
    ("outcome", "retried", "dlq"),
    [
        (Reject("no"), 0, ["Reject"]),
        (Retry(delay=30), 1, []),
        (ValueError("boom"), 1, []),
    ],
)
async def test_a_failure_is_retried_or_dead_lettered_by_its_kind(
    mq: LeanMQ, raw: aioredis.Redis, outcome: BaseException, retried: int, dlq: list[str]
) -> None:
    runner, _ = await _runner(mq, "fail", outcome, max_retries=2)
    await runner.executor.process(await _work(raw, runner, "x"))
    assert runner.stats.failed == 1
    assert runner.stats.retried == retried
    assert await _dlq_reasons(raw, runner) == dlq


async def test_a_failure_past_max_retries_is_dead_lettered_with_its_traceback(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    runner, _ = await _runner(mq, "spent", ValueError("boom"), max_retries=0)
    await runner.executor.process(await _work(raw, runner, "x"))
    ((_, fields),) = await raw.xrange(runner.queue.dead_letter_queue().stream)
    assert fields[b"dlq.reason"] == b"failed after 1 attempt(s): ValueError: boom"
    assert b"raise outcome" in fields[b"dlq.traceback"]


async def test_only_the_handlers_own_deadline_is_reported_as_its_timeout(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "leanmq_async.worker")
    queue, _ = await mq.create_queue_pair("slow")

    @queue.handler(timeout=0.05, max_retries=5)
    async def handle(data: Any) -> None:
        if data == "own":
            raise TimeoutError("the HTTP client's")
        await anyio.sleep(10)

    runner = mq.worker().runners[0]
    await runner.executor.process(await _work(raw, runner, "own"))
    await runner.executor.process(await _work(raw, runner, "slow"))
    errors = [r.__dict__["error"] for r in events(caplog, "retried")]
    assert errors == ["the HTTP client's", "handler exceeded its timeout of 0.05s"]


def test_the_traceback_summary_keeps_the_cause_chain() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as exc:
        text = traceback_summary(exc)
    assert text.index("KeyError: 'inner'") < text.index("RuntimeError: outer")
    assert "direct cause" in text


async def test_a_processor_skips_a_message_it_no_longer_holds(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    runner, calls = await _runner(mq, "skip", visibility_timeout=0.2)
    work = await _work(raw, runner, "x")
    await raw.xclaim(runner.stream, runner.group, "other", 0, [work.sid])
    work.fetched -= 1.0  # it waited past half its lease before a processor took it
    state = runner.state
    state.slots.free -= 1
    state.in_flight.add(work.sid)
    state.work.put_many([work])
    state.work.close()
    await runner.executor.run()
    assert calls == []
    assert not state.in_flight
    assert state.slots.free == state.slots.concurrency


async def test_a_message_with_a_ttl_is_handled_while_redis_cannot_remeasure_the_clock() -> None:
    """Redis went away just when the clock estimate was due for re-measuring: the TIME
    call's LeanMQConnectionError escaped the processor and ended the worker. The estimate
    now goes on from the last measurement."""
    with RedisServer() as server:
        async with LeanMQ(server.url, prefix="c:") as mq:
            runner, calls = await _runner(mq, "ttl")
            await runner.queue.send_message("x", ttl=600)
            async with aioredis.Redis.from_url(server.url) as raw:
                ((sid, fields),) = await read_as(
                    raw, runner.group, runner.consumer, runner.stream, 1
                )
            await mq.store.sync_clock()
            server.kill()
            mq.store._clock_synced_at -= 3600  # re-measuring is due
            await runner.executor.process(Work(sid, fields, 1, time.monotonic()))
    assert calls == ["x"]
    assert runner.settler.unacked() == {sid}
