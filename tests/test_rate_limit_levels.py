"""Rate limits with priorities and cancellation, on a real Redis.

A deferral keeps its priority (it waits in its level's delayed set and comes back to its
level's stream, attempts unchanged); a cancelled message is never deferred nor run (the
worker's local set is checked before the limiter is asked; defer.lua refuses a marked
one); ``Queue.cancel`` finds a deferred message by its name at any level.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from leanmq_async import CancelOutcome, LeanMQ, Message, RateLimit
from leanmq_async.priority import level_id
from leanmq_async.rate_limit import granted_start
from leanmq_async.worker.limiter import FIELD_RESERVED
from leanmq_async.worker.runner import HandlerRunner
from leanmq_async.worker.state import Work
from tests.worker_apps.common import read_as, wait_until

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


async def _runner(mq: LeanMQ, name: str, **options: Any) -> tuple[HandlerRunner, list[Any]]:
    queue, _ = await mq.create_queue_pair(name)
    calls: list[Any] = []

    @queue.handler(**options)
    async def handle(message: Message[Any]) -> None:
        calls.append((message.data, message.attempt, granted_start()))

    return mq.worker().runners[0], calls


async def _work(raw: aioredis.Redis, runner: HandlerRunner, data: Any, level: int = 1) -> Work:
    """Send ``data`` at ``level`` and read it as the runner's consumer (named as the
    worker names a level's entry)."""
    await runner.queue.send_message(data, priority=level)
    stream = runner.queue.keys.at(level).stream
    ((sid, fields),) = await read_as(raw, runner.group, runner.consumer, stream, 1)
    return Work(level_id(sid.decode(), level).encode(), fields, 1, time.monotonic())


async def _dead(runner: HandlerRunner) -> list[tuple[Any, str, int]]:
    dead = await runner.queue.dead_letter_queue().peek_messages(count=100)
    return [(m.data, m.dead_letter.reason, m.dead_letter.attempts) for m in dead if m.dead_letter]


# -- priorities ----------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 2])
async def test_a_deferral_waits_at_its_level_and_comes_back_there(
    mq: LeanMQ, raw: aioredis.Redis, level: int
) -> None:
    """Over the limit, a level's message is acked in its level's stream and held in its
    level's delayed set; moved back, it is in its level's stream again, holding its
    reservation, and runs on it with its attempts unchanged."""
    runner, calls = await _runner(mq, "lv", rate_limit=RateLimit(1, per=60))
    await runner.executor.process(await _work(raw, runner, "first"))
    work = await _work(raw, runner, "later", level)
    await runner.executor.process(work)
    assert [c[0] for c in calls] == ["first"]
    assert (runner.stats.rate_limited, runner.stats.dead_lettered) == (1, 0)
    keys, main = runner.queue.keys.at(level), runner.queue.keys
    raw_sid = work.sid.decode().rsplit(":p", 1)[0]
    delayed = cast(
        list[tuple[bytes, float]], await raw.zrange(keys.delayed, 0, -1, withscores=True)
    )
    ((member, due),) = delayed
    assert member.decode() == f"{runner.group}|{raw_sid}"
    assert await raw.zcard(main.delayed) == 0, "not in the main level's delayed set"
    assert await raw.xpending(keys.stream, runner.group) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }, "acked in its own level's stream"
    mq.store.clock_shift_ms = 60_250
    assert (await mq.store.move_due(main))[0] == 0
    assert (await mq.store.move_due(keys))[0] == 1
    # A normal message waits with it: a worker's read (highest level first) takes the
    # deferred one first if it is high, after the normal one if it is low.
    await runner.queue.send_message("normal")
    order = list(main.levels())
    got, _ = await mq.store.claim_new(order, runner.group, runner.consumer, 1)
    ((read_level, ((sid, fields),)),) = [(lv, e) for lv, e in got if e]
    assert read_level == max(level, 1)
    if level == 0:
        got, _ = await mq.store.claim_new(order, runner.group, runner.consumer, 1)
        ((read_level, ((sid, fields),)),) = [(lv, e) for lv, e in got if e]
        assert read_level == 0
    assert fields is not None and int(fields[FIELD_RESERVED]) == int(due)
    back = Work(level_id(sid.decode(), level).encode(), fields, 1, time.monotonic())
    await runner.executor.process(back)
    assert [(c[0], c[1]) for c in calls] == [("first", 1), ("later", 1)]
    assert await _dead(runner) == []


async def test_deferred_high_messages_come_back_high_and_run_first(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """A worker, 2 starts per second: high messages deferred come back at level 2 and
    still run before the normal ones waiting with them; each runs once, attempt 1."""
    queue, _ = await mq.create_queue_pair("hp")
    order: list[tuple[str, int]] = []

    @queue.handler(rate_limit=RateLimit(2, per=1), concurrency=1)
    async def handle(message: Message[Any]) -> None:
        order.append((message.data, message.attempt))

    await queue.send_messages([f"n{i}" for i in range(3)])
    await queue.send_messages([f"h{i}" for i in range(5)], priority="high")
    async with mq.worker(**FAST) as worker:
        await wait_until(lambda: len(order) == 8, within=15)
        assert worker.stats.rate_limited > 0
    assert sorted(order) == sorted(
        [(f"n{i}", 1) for i in range(3)] + [(f"h{i}", 1) for i in range(5)]
    )
    assert {d for d, _ in order[:2]} <= {f"h{i}" for i in range(5)}, order
    assert await queue.dead_letter_queue().peek_messages() == []
    info = await queue.get_info()
    assert info.delayed_messages == 0


async def test_a_partitioned_queue_defers_a_high_message_at_its_level(mq: LeanMQ) -> None:
    """Partitions, priorities and a limit together: every high message runs once."""
    pq = mq.queue("pp", partitions=2)
    seen: list[tuple[str, int]] = []

    @pq.handler(rate_limit=RateLimit(2, per=1))
    async def handle(message: Message[Any]) -> None:
        seen.append((message.data, message.attempt))

    await pq.create()
    for i in range(5):
        await pq.send_message(f"h{i}", key=str(i), priority="high")
    async with mq.worker(**FAST) as worker:
        await wait_until(lambda: len(seen) == 5, within=15)
        assert worker.stats.rate_limited > 0
    assert sorted(seen) == [(f"h{i}", 1) for i in range(5)]
    assert (await pq.get_info()).delayed_messages == 0


# -- cancellation --------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1, 2])
async def test_a_marked_message_over_the_limit_is_dead_lettered_not_deferred(
    mq: LeanMQ, raw: aioredis.Redis, level: int
) -> None:
    """Cancelled while pending (a marker; this worker did not hear of it): the limiter
    says later, defer.lua refuses (2) and the executor dead-letters it "cancelled"."""
    runner, calls = await _runner(mq, "mk", rate_limit=RateLimit(1, per=60))
    await runner.executor.process(await _work(raw, runner, "first"))
    work = await _work(raw, runner, "marked", level)
    assert await runner.queue.cancel(work.sid.decode()) is CancelOutcome.RUNNING
    await runner.executor.process(work)
    assert [c[0] for c in calls] == ["first"]
    assert runner.stats.rate_limited == 0
    assert await _dead(runner) == [("marked", "cancelled", 0)]
    keys = runner.queue.keys.at(level)
    assert await raw.zcard(keys.delayed) == 0
    pending = await raw.xpending_range(keys.stream, runner.group, "-", "+", 10)
    assert work.sid.split(b":p")[0] not in [p["message_id"] for p in pending]


async def test_a_locally_known_cancel_never_asks_the_limiter(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    runner, calls = await _runner(mq, "loc", rate_limit=RateLimit(5, per=60))
    work = await _work(raw, runner, "gone", 2)
    assert runner.executor.cancels.request(work.sid) is False  # nothing runs it yet
    await runner.executor.process(work)
    assert calls == []
    assert await raw.exists(runner.queue.keys.rate_limit(runner.group)) == 0, "not asked"
    assert await _dead(runner) == [("gone", "cancelled", 0)]


@pytest.mark.parametrize("level", [0, 1, 2])
async def test_a_deferred_message_is_cancelled_by_its_id(
    mq: LeanMQ, raw: aioredis.Redis, level: int
) -> None:
    """``Queue.cancel`` of the id a send returned finds its deferral (the delayed member
    'group|id' of its level): removed and dead-lettered, it never comes back."""
    runner, calls = await _runner(mq, "df", rate_limit=RateLimit(1, per=60))
    await runner.executor.process(await _work(raw, runner, "first"))
    work = await _work(raw, runner, "deferred", level)
    await runner.executor.process(work)
    assert runner.stats.rate_limited == 1
    assert await runner.queue.cancel(work.sid.decode()) is CancelOutcome.CANCELLED
    assert await _dead(runner) == [("deferred", "cancelled", 0)]
    keys = runner.queue.keys.at(level)
    assert await raw.zcard(keys.delayed) == 0 and await raw.hlen(keys.delayed_data) == 0
    mq.store.clock_shift_ms = 120_000
    assert (await mq.store.move_due(keys))[0] == 0
    assert [c[0] for c in calls] == ["first"]
