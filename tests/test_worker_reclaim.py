"""Leases and recovery: dead workers' messages are reclaimed, live workers keep theirs,
a restarted worker takes its own pending entries back first, and a worker survives its
stream (or the whole Redis) disappearing."""

from __future__ import annotations

import logging
import signal
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Message, Reject
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import (
    app_env,
    events,
    log_tail,
    pending_count,
    settled,
    start_app,
    wait_until,
)

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


async def test_killed_workers_messages_are_handled_by_another_after_the_lease(
    redis_server: RedisServer, mq: LeanMQ, raw: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    queue = mq.queue("work")
    ledger = f"{prefix}ledger"
    total = 40
    await queue.send_messages(list(range(total)))
    env = app_env(
        redis_server.url,
        prefix,
        APP_CONSUMER="worker-a",
        APP_LEDGER=ledger,
        APP_CONCURRENCY=5,
        APP_LEASE=1.0,
        APP_SLEEP=0.3,
    )
    log = tmp_path / "worker-a.log"
    proc = start_app("slow_ledger", env, log)
    try:
        await wait_until(
            lambda: _llen_at_least(raw, ledger, 5), within=30, what="worker A under way"
        )
        proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(proc.wait)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log_tail(log)
    held = {
        c["name"].decode(): int(c["pending"])
        for c in await raw.xinfo_consumers(queue.stream, queue.consumer_group)
    }
    in_flight = held.get("worker-a", 0)
    assert in_flight >= 1, held

    deliveries: list[int] = []

    @queue.handler(concurrency=10, visibility_timeout=1.0)
    async def handle(message: Message[int]) -> None:
        deliveries.append(message.delivery_count)
        await raw.rpush(ledger, message.data)

    async with mq.worker(**FAST) as worker_b:
        await wait_until(
            lambda: _ledger_complete(raw, ledger, total), within=30, what="every message"
        )
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")

    done = Counter(int(x) for x in await raw.lrange(ledger, 0, -1))
    assert set(done) == set(range(total))
    duplicates = sum(done.values()) - total
    assert duplicates <= in_flight
    assert worker_b.stats.reclaimed == in_flight
    assert deliveries.count(2) == in_flight  # the reclaimed ones were delivered twice


async def _llen_at_least(raw: aioredis.Redis, key: str, n: int) -> bool:
    return int(await raw.llen(key)) >= n


async def _ledger_complete(raw: aioredis.Redis, key: str, total: int) -> bool:
    return {int(x) for x in await raw.lrange(key, 0, -1)} == set(range(total))


async def test_long_handler_keeps_its_lease_and_runs_once(
    redis_server: RedisServer, mq: LeanMQ, raw: aioredis.Redis, prefix: str
) -> None:
    lease = 0.5
    runs: Counter[str] = Counter()
    deliveries: list[int] = []
    workers = []
    async with (
        LeanMQ(redis_server.url, prefix=prefix, consumer_name="w1") as mq1,
        LeanMQ(redis_server.url, prefix=prefix, consumer_name="w2") as mq2,
    ):
        for client in (mq1, mq2):

            @client.queue("long").handler(concurrency=3, visibility_timeout=lease)
            async def handle(message: Message[int]) -> None:
                runs[message.id] += 1
                deliveries.append(message.delivery_count)
                await anyio.sleep(3 * lease)

        queue = mq.queue("long")
        ids = await queue.send_messages(list(range(6)))
        async with mq1.worker(**FAST) as w1, mq2.worker(**FAST) as w2:
            workers = [w1, w2]
            await wait_until(lambda: sum(runs.values()) == 6, what="six started")
            await wait_until(
                lambda: settled(raw, queue.stream, queue.consumer_group),
                within=15,
                what="all acked",
            )
    assert runs == dict.fromkeys(ids, 1)
    assert deliveries == [1] * 6
    assert [w.stats.reclaimed for w in workers] == [0, 0]
    assert sum(w.stats.handled for w in workers) == 6


async def test_restarted_worker_takes_back_its_own_pending_first(
    redis_server: RedisServer, mq: LeanMQ, raw: aioredis.Redis, prefix: str
) -> None:
    queue, _ = await mq.create_queue_pair("mine")
    ids = await queue.send_messages(["a", "b", "c"])
    # A previous run of consumer "node-1" read them and died before handling them.
    await raw.xreadgroup(queue.consumer_group, "node-1", {queue.stream: ">"}, count=10)
    got: list[Message[Any]] = []
    lease = 60.0

    async with LeanMQ(redis_server.url, prefix=prefix, consumer_name="node-2") as other:

        @other.queue("mine").handler(visibility_timeout=lease)
        async def elsewhere(message: Message[str]) -> None:
            got.append(message)

        async with other.worker(**FAST):
            await anyio.sleep(0.5)
        assert got == []  # another consumer must wait for the lease

    async with LeanMQ(redis_server.url, prefix=prefix, consumer_name="node-1") as same:

        @same.queue("mine").handler(visibility_timeout=lease)
        async def handle(message: Message[str]) -> None:
            got.append(message)

        with anyio.fail_after(lease / 4):
            async with same.worker(**FAST):
                await wait_until(lambda: len(got) == 3, what="own pending handled")
                await wait_until(
                    lambda: settled(raw, queue.stream, queue.consumer_group), what="acks"
                )
    assert sorted(m.id for m in got) == ids
    assert {m.delivery_count for m in got} == {2}


async def test_deleted_stream_is_recreated_with_its_group(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leanmq_async")
    queue = mq.queue("vanishing")
    handled: list[str] = []

    @queue.handler
    async def handle(data: str) -> None:
        handled.append(data)

    async with mq.worker(**FAST):
        await queue.send_message("before")
        await wait_until(lambda: handled == ["before"], what="first message")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="ack")
        errors_before = await _nogroup_errors(raw)
        assert await raw.delete(queue.stream) == 1
        await queue.send_messages(["after1", "after2"])
        await wait_until(lambda: len(handled) == 3, what="messages after the deletion")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
        # Not spinning: only a handful of commands ran into the missing group.
        await anyio.sleep(0.5)
        assert await _nogroup_errors(raw) - errors_before <= 5
    assert handled == ["before", "after1", "after2"]
    assert len(events(caplog, "group_created")) == 1


async def test_a_recreated_stream_gets_only_the_handlers_group(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("vanishing-billing")
    handled: list[str] = []

    @queue.handler(group="billing")
    async def handle(data: str) -> None:
        handled.append(data)

    async with mq.worker(**FAST):
        await queue.send_message("before")
        await wait_until(lambda: handled == ["before"], what="first message")
        await wait_until(lambda: settled(raw, queue.stream, "billing"), what="ack")
        assert await raw.delete(queue.stream) == 1
        await queue.send_message("after")
        await wait_until(lambda: len(handled) == 2, what="the message after the deletion")
        await wait_until(lambda: settled(raw, queue.stream, "billing"), what="ack")
    assert [g["name"] for g in await raw.xinfo_groups(queue.stream)] == [b"billing"]


async def _nogroup_errors(raw: aioredis.Redis) -> int:
    stats = await raw.info("errorstats")
    return int(stats.get("errorstat_NOGROUP", {}).get("count", 0))


async def test_worker_survives_a_redis_restart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="leanmq_async")
    handled: list[str] = []
    with RedisServer() as server:
        async with LeanMQ(server.url, prefix="r:") as mq:
            queue = mq.queue("phoenix")

            @queue.handler(max_retries=0)
            async def handle(data: str) -> None:
                handled.append(data)
                if data == "reject":
                    raise Reject("refused after the restart")

            async with mq.worker(**FAST) as worker:
                await queue.send_message("before")
                await wait_until(lambda: handled == ["before"], what="first message")
                await anyio.to_thread.run_sync(partial(server.restart, wipe=True))
                async with LeanMQ(server.url, prefix="r:") as producer:
                    again = producer.queue("phoenix")
                    await again.send_messages(["after", "reject"])
                    await wait_until(
                        lambda: len(handled) == 3, within=30, what="messages after restart"
                    )
                    await wait_until(lambda: worker.stats.dead_lettered == 1, what="rejected")
                    # The queue exists again as a whole: its DLQ can be opened and read.
                    dlq = await producer.get_dead_letter_queue("phoenix")
                    (dead,) = await dlq.get_messages(count=5)
                    assert dead.data == "reject"
                    assert [q.name for q in await producer.list_queues()] == [
                        "phoenix",
                        "phoenix:dlq",
                    ]
                async with aioredis.Redis.from_url(server.url) as raw:
                    await wait_until(
                        lambda: settled(raw, queue.stream, queue.consumer_group), what="acks"
                    )
                    assert await pending_count(raw, queue.stream, queue.consumer_group) == 0
    assert sorted(handled) == ["after", "before", "reject"]
    assert events(caplog, "redis_unavailable")
    assert events(caplog, "group_created")


async def test_settling_waits_for_redis_to_come_back(caplog: pytest.LogCaptureFixture) -> None:
    """Acks and retries due while Redis is down are made once it is back (nothing lost)."""
    caplog.set_level(logging.INFO, logger="leanmq_async")
    release = anyio.Event()
    calls: list[tuple[int, int]] = []
    # appendfsync always: a SIGKILLed server keeps every write it acknowledged.
    server = RedisServer(appendonly=True, args=["--appendfsync", "always"])
    with server:
        async with LeanMQ(server.url, prefix="o:") as mq:
            queue = mq.queue("outage")

            @queue.handler(concurrency=4, max_retries=1, backoff=lambda _: 0.01)
            async def handle(message: Message[int]) -> None:
                calls.append((message.data, message.attempt))
                await release.wait()
                if message.data == 0 and message.attempt == 1:
                    raise RuntimeError("retry me")

            await queue.send_messages(list(range(4)))
            async with mq.worker(**FAST, settle_timeout=60) as worker:
                await wait_until(lambda: len(calls) == 4, what="four in flight")
                await anyio.to_thread.run_sync(server.kill)
                release.set()
                await wait_until(lambda: worker.stats.failed == 1, what="the failure")
                await anyio.sleep(0.3)  # the ack and the retry meet a dead server
                await anyio.to_thread.run_sync(server.start)
                await wait_until(lambda: (0, 2) in calls, within=30, what="the retry")
                async with aioredis.Redis.from_url(server.url) as raw:
                    await wait_until(
                        lambda: settled(raw, queue.stream, queue.consumer_group),
                        within=30,
                        what="every ack made",
                    )
                    assert await raw.xlen(queue.dead_letter_queue().stream) == 0
    assert sorted(calls) == [(0, 1), (0, 2), (1, 1), (2, 1), (3, 1)]
    assert worker.stats.handled == 4
    assert worker.stats.retried == 1
