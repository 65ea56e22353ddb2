"""TTL semantics (SEMANTICS.md, "TTL"): the expiry pass never touches a delivery under
way, dead-letters per group it is aimed at, keeps up with a large backlog; the Redis
clock decides; ``delay >= ttl`` is refused.

Time is moved with ``mq.store.clock_shift_ms`` instead of sleeping.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest
import redis.asyncio as aioredis

import leanmq_async.store.base as store_module  # the clock lives there
import leanmq_async.worker.maintenance as maintenance_module
from leanmq_async import ConfigurationError, LeanMQ, Queue
from tests.worker_apps.common import entries, pending_count, settled, wait_until

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}
HOUR_MS = 3_600_000


def no_wait(_retry: int) -> float:
    return 0.01


async def deliver(raw: aioredis.Redis, queue: Queue, group: str, count: int) -> list[str]:
    """XREADGROUP as consumer "c" of ``group`` (no expiry check); return the ids."""
    reply = cast(Any, await raw.xreadgroup(group, "c", {queue.stream: ">"}, count=count))
    return [sid.decode() for sid, _ in reply[0][1]] if reply else []


async def aimed_at(raw: aioredis.Redis, queue: Queue, group: str) -> int:
    """Read every new entry as ``group``; count those meant for it (no ``g``, or
    ``g`` = group), the ones a reader would hand out."""
    reply = cast(Any, await raw.xreadgroup(group, "r", {queue.stream: ">"}, count=100))
    found = reply[0][1] if reply else []
    return sum(1 for _, f in found if f.get(b"g", group.encode()) == group.encode())


async def dlq_groups(raw: aioredis.Redis, queue: Queue) -> list[str]:
    return sorted(
        f[b"dlq.group"].decode() for _, f in await entries(raw, queue.dead_letter_queue().stream)
    )


# -- item 1: a delivery under way is never expired --------------------------------------


async def test_handler_outliving_its_ttl_then_succeeding_is_handled_only(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, dlq = await mq.create_queue_pair("slow")
    started, release = anyio.Event(), anyio.Event()

    @queue.handler(expired="dlq")
    async def handle(data: str) -> None:
        started.set()
        await release.wait()

    async with mq.worker(**FAST, expire_interval=3600) as worker:
        await queue.send_message("long job", ttl=30)
        with anyio.fail_after(10):
            await started.wait()
        mq.store.clock_shift_ms = 60_000  # the TTL ran out while the handler runs
        assert await worker.maintenance.expire_once() == 0
        assert await raw.xlen(dlq.stream) == 0
        assert await pending_count(raw, queue.stream, queue.consumer_group) == 1
        release.set()
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="ack")
        mq.store.clock_shift_ms += 10 * HOUR_MS  # past any re-check
        assert await worker.maintenance.expire_once() == 0  # removed, not counted
    assert (worker.stats.handled, worker.stats.expired, worker.stats.dead_lettered) == (1, 0, 0)
    assert await raw.xlen(dlq.stream) == 0
    assert await raw.xlen(queue.stream) == 0
    assert await raw.zcard(queue.keys.expiry) == 0


@pytest.mark.parametrize("policy", ["drop", "dlq"])
async def test_handler_failing_after_its_ttl_keeps_its_retry(
    mq: LeanMQ, raw: aioredis.Redis, policy: str
) -> None:
    queue, dlq = await mq.create_queue_pair("late-fail")
    started, release = anyio.Event(), anyio.Event()
    calls: list[str] = []

    @queue.handler(expired=policy, max_retries=3, backoff=no_wait)
    async def handle(data: str) -> None:
        calls.append(data)
        started.set()
        await release.wait()
        raise RuntimeError("failed after the TTL")

    async with mq.worker(**FAST, expire_interval=3600) as worker:
        await queue.send_message("job", ttl=30)
        with anyio.fail_after(10):
            await started.wait()
        mq.store.clock_shift_ms = 60_000
        assert await worker.maintenance.expire_once() == 0  # pending: left alone
        release.set()
        # The retry is scheduled (not lost to a lease the expiry pass took); the copy,
        # read after the TTL, is expired for this group by the reader.
        await wait_until(lambda: worker.stats.expired == 1, what="the retry copy expired")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    assert worker.stats.retried == 1
    assert worker.stats.lost == 0
    assert calls == ["job"]  # the copy started after the TTL: no second call
    dead = await entries(raw, dlq.stream)
    if policy == "drop":
        assert dead == []
    else:
        ((_, fields),) = dead
        assert fields[b"dlq.reason"] == b"expired"
        assert fields[b"dlq.group"] == queue.consumer_group.encode()


# -- item 2: per group, and the retry copy's target ------------------------------------


@pytest.mark.parametrize("a_reads_copy", [True, False])
async def test_expiry_dead_letters_per_group_and_respects_the_copy_target(
    mq: LeanMQ, raw: aioredis.Redis, a_reads_copy: bool
) -> None:
    queue, dlq = await mq.create_queue_pair("fan")
    await raw.xgroup_create(queue.stream, "A", id="0")
    await raw.xgroup_create(queue.stream, "B", id="0")
    await queue.send_message("m", ttl=30)
    (sid,) = await deliver(raw, queue, "A", 1)
    # A fails it: a retry copy aimed at A (g = A) replaces A's delivery.
    (result,) = await mq.store.settle_many([mq.store.retry_call(queue.keys, "A", "c", sid, 0, 1)])
    assert result == 1
    if a_reads_copy:
        (copy,) = await deliver(raw, queue, "A", 1)
        assert await raw.xack(queue.stream, "A", copy) == 1  # A handled the copy
    # B (and the default group) never read anything.
    mq.store.clock_shift_ms = 60_000
    await mq.process_expired_messages(policy="dlq")
    assert await raw.xlen(queue.stream) == 0
    want = sorted(["B", queue.consumer_group] + ([] if a_reads_copy else ["A"]))
    assert await dlq_groups(raw, queue) == want
    # Requeued, each group gets the message once: B's entry is not delivered to A.
    mq.store.clock_shift_ms = 0
    dead_ids = [m.id for m in await dlq.peek_messages(100)]
    assert await dlq.requeue_messages(dead_ids) == len(want)
    assert await aimed_at(raw, queue, "A") == (0 if a_reads_copy else 1)
    assert await aimed_at(raw, queue, "B") == 1
    assert await aimed_at(raw, queue, queue.consumer_group) == 1


async def test_expiry_with_no_group_dead_letters_once_with_an_empty_group(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = await mq.create_queue_pair("lonely")
    await raw.xgroup_destroy(queue.stream, queue.consumer_group)
    await queue.send_message("m", ttl=30)
    mq.store.clock_shift_ms = 60_000
    assert await mq.process_expired_messages(policy="dlq") == 1
    assert await dlq_groups(raw, queue) == [""]


async def test_the_worker_pass_follows_each_groups_expired_policy(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = await mq.create_queue_pair("mixed")

    @queue.handler(group="A", expired="drop")
    async def a(data: str) -> None:  # pragma: no cover - never called
        pass

    @queue.handler(group="B", expired="dlq")
    async def b(data: str) -> None:  # pragma: no cover - never called
        pass

    await mq.store.ensure_groups([queue.stream, queue.stream], ["A", "B"])
    await queue.send_message("m", ttl=30)
    mq.store.clock_shift_ms = 60_000
    worker = mq.worker(**FAST)  # not started: only its upkeep step runs
    assert await worker.maintenance.expire_once() == 1
    # A drops it, B dead-letters it; the default group (no handler here) follows the
    # queue's policy ("dlq": some handler of the queue dead-letters).
    assert await dlq_groups(raw, queue) == sorted(["B", queue.consumer_group])
    assert await raw.xlen(queue.stream) == 0


# -- item 4: the worker's pass keeps up -------------------------------------------------


async def test_one_worker_expiry_pass_removes_a_large_backlog(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = await mq.create_queue_pair("backlog")

    @queue.handler
    async def handle(data: int) -> None:  # pragma: no cover - never called
        pass

    for start in range(0, 5000, 1000):
        await queue.send_messages(range(start, start + 1000), ttl=30)
    mq.store.clock_shift_ms = 60_000
    worker = mq.worker(**FAST)  # not started: only its upkeep step runs
    assert await worker.maintenance.expire_once() == 5000
    assert await raw.xlen(queue.stream) == 0
    assert await raw.zcard(queue.keys.expiry) == 0


async def test_a_pass_is_bounded_per_queue_and_logs_what_is_left(
    mq: LeanMQ,
    raw: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(maintenance_module, "_EXPIRE_BATCH", 100)
    monkeypatch.setattr(maintenance_module, "_EXPIRE_BATCHES", 3)
    queue, _ = await mq.create_queue_pair("bounded")

    @queue.handler
    async def handle(data: int) -> None:  # pragma: no cover - never called
        pass

    await queue.send_messages(range(450), ttl=30)
    mq.store.clock_shift_ms = 60_000
    worker = mq.worker(**FAST)
    with caplog.at_level(logging.INFO, logger="leanmq_async"):
        assert await worker.maintenance.expire_once() == 300
    (behind,) = [r for r in caplog.records if r.msg == "expiry_behind"]
    assert behind.__dict__["left_at_least"] == 100  # counted up to one batch
    assert await worker.maintenance.expire_once() == 150  # the next pass goes on
    assert await raw.zcard(queue.keys.expiry) == 0


async def test_pending_entries_at_the_front_do_not_block_the_scan(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, dlq = await mq.create_queue_pair("front")

    @queue.handler(expired="dlq")
    async def handle(data: int) -> None:  # pragma: no cover - never called
        pass

    await queue.send_messages(range(1000), ttl=30)
    held = await deliver(raw, queue, queue.consumer_group, 1000)  # 1,000 long handlers
    assert len(held) == 1000
    await queue.send_messages(range(200), ttl=30)
    mq.store.clock_shift_ms = 60_000
    worker = mq.worker(**FAST)
    assert await worker.maintenance.expire_once() == 200
    assert await raw.xlen(dlq.stream) == 200
    assert await pending_count(raw, queue.stream, queue.consumer_group) == 1000
    assert await raw.xlen(queue.stream) == 1000
    # Re-checked later, still left to their consumer; once acked they go, unreported.
    assert await queue.acknowledge_messages(held) == 1000
    mq.store.clock_shift_ms += HOUR_MS
    assert await worker.maintenance.expire_once() == 0
    assert await raw.xlen(queue.stream) == 0
    assert await raw.xlen(dlq.stream) == 200


# -- item 8: the Redis clock decides ----------------------------------------------------


async def test_a_stepped_host_clock_does_not_drop_live_messages_in_the_worker(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, dlq = await mq.create_queue_pair("clock")
    handled: list[str] = []

    @queue.handler(expired="dlq")
    async def handle(data: str) -> None:
        handled.append(data)

    async with mq.worker(**FAST, expire_interval=3600) as worker:
        # The worker synced its clock at start; now its estimate is 3 hours ahead.
        mq.store._clock_offset_ms += 3 * HOUR_MS
        await queue.send_message("live", ttl=60)
        await wait_until(lambda: handled == ["live"], what="the live message handled")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="ack")
    assert worker.stats.expired == 0
    assert await raw.xlen(dlq.stream) == 0


async def test_a_stepped_host_clock_does_not_drop_live_messages_in_get_messages(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = await mq.create_queue_pair("clock")
    await mq.store.sync_clock()
    mq.store._clock_offset_ms += 3 * HOUR_MS
    await queue.send_messages(["a", "b"], ttl=60)
    await queue.send_message("c")
    assert [m.data for m in await queue.get_messages(count=10)] == ["a", "b", "c"]
    # Really expired (Redis agrees): acknowledged, not returned.
    await queue.send_message("old", ttl=1)
    mq.store.clock_shift_ms = 60_000
    assert await queue.get_messages(count=10) == []
    assert await pending_count(raw, queue.stream, queue.consumer_group) == 3


async def test_the_clock_estimate_ignores_a_host_clock_step(
    mq: LeanMQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    await mq.store.sync_clock()
    stepped = SimpleNamespace(time=lambda: time.time() + 3 * 3600, monotonic=time.monotonic)
    monkeypatch.setattr(store_module, "time", stepped)
    sec, usec = await mq.redis.time()
    assert abs(await mq.store.redis_now_ms() - (sec * 1000 + usec / 1000)) < 60_000


async def test_expire_at_read_checks_the_redis_clock_and_ownership(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, dlq = await mq.create_queue_pair("read")
    await queue.send_message("m", ttl=30)
    reply = cast(Any, await raw.xreadgroup(queue.consumer_group, "c1", {queue.stream: ">"}))
    ((raw_sid, fields),) = reply[0][1]
    sid, x = raw_sid.decode(), int(fields[b"x"])
    store = mq.store

    def call(consumer: str) -> Any:
        return store.expire_read_call(
            queue.keys, queue.consumer_group, consumer, queue.name, "dlq", sid, x
        )

    assert await store.settle_many([call("c1")]) == [0]  # Redis: still live
    store.clock_shift_ms = 60_000
    assert await store.settle_many([call("c2")]) == [-1]  # not c2's
    assert await raw.xlen(dlq.stream) == 0
    assert await store.settle_many([call("c1")]) == [1]
    ((_, dead),) = await entries(raw, dlq.stream)
    assert dead[b"dlq.group"] == queue.consumer_group.encode()
    assert dead[b"dlq.reason"] == b"expired"
    assert await pending_count(raw, queue.stream, queue.consumer_group) == 0


# -- delay and ttl together -------------------------------------------------------------


async def test_delay_not_shorter_than_ttl_is_refused(mq: LeanMQ) -> None:
    queue, _ = await mq.create_queue_pair("both")
    parts = mq.queue("parted", partitions=2)
    with pytest.raises(ConfigurationError, match="expire before it becomes visible"):
        await queue.send_message("x", ttl=5, delay=5)
    with pytest.raises(ConfigurationError, match="shorter than ttl"):
        await queue.send_messages(["x"], ttl=5, delay=10)
    with pytest.raises(ConfigurationError, match="shorter than ttl"):
        await parts.send_message("x", ttl=1, delay=2)
    with pytest.raises(ConfigurationError, match="shorter than ttl"):
        await parts.send_messages(["x", "y"], ttl=1, delay=2)
    with pytest.raises(ConfigurationError, match="shorter than ttl"):
        async with mq.transaction() as tx:
            tx.send_message(queue, "x", ttl=1, delay=1)
    assert (await queue.get_info()).delayed_messages == 0
    await queue.send_message("ok", ttl=5, delay=1)
    assert (await queue.get_info()).delayed_messages == 1
