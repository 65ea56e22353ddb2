"""The client's connection pool after cancellations, and time: TTLs and wrong clocks.
Cases 15 and 18 of the reliability suite."""

from __future__ import annotations

import random
import uuid
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ
from leanmq_async.testing import RedisServer
from tests.reliability.harness import (
    Apps,
    Ledger,
    Producer,
    app_env,
    assert_settled,
    check,
    ledger_client,
    note,
    redis_ms,
    report,
    settled,
    sleep_until_redis_time_passes,
    wait_until,
)
from tests.worker_apps.common import blocked_readers

pytestmark = pytest.mark.anyio


# -- case 15 -----------------------------------------------------------------------------


async def test_case15_cancelled_blocking_read_leaves_the_pool_clean(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    rng = random.Random(15)
    async with LeanMQ(redis_server.url, prefix=prefix) as mq:
        queue, _ = await mq.create_queue_pair("work")
        cancelled = 0
        for i in range(25):
            # The brief's case first (0.1 s), then random points of the read, some of them
            # concurrent so several pool connections are abandoned at once.
            delays = [0.1] if i == 0 else [rng.uniform(0.0, 0.2) for _ in range(rng.randint(1, 4))]
            async with anyio.create_task_group() as tg:
                for delay in delays:
                    tg.start_soon(_cancelled_read, queue, delay)
            cancelled += len(delays)
        # No read outlives its cancellation (it would take the next message).
        await wait_until(lambda: _no_blocked_reader(raw), what="abandoned reads gone")
        mismatches: list[tuple[str, Any]] = []
        errors: list[BaseException] = []

        async def pairs(task: int) -> None:
            for j in range(20):
                key = f"{prefix}k{task}-{j}"
                value = uuid.uuid4().hex.encode()
                try:
                    await mq.redis.set(key, value)
                    got = await mq.redis.get(key)
                except Exception as exc:
                    errors.append(exc)
                    continue
                if got != value:
                    mismatches.append((key, got))

        async with anyio.create_task_group() as tg:  # 1,000 pairs on every pool connection
            for task in range(50):
                tg.start_soon(pairs, task)
        sid = await queue.send_message({"mid": "c15-after"})
        messages = await queue.get_messages(count=10, block_for_seconds=2)
        assert [m.id for m in messages] == [sid]  # not swallowed by an abandoned read
        await queue.acknowledge_messages([sid])
        line = (
            f"reliability case 15: confirmed=1 handled=1 lost=0 duplicated=0 "
            f"cancelled_reads={cancelled} set_get_pairs=1000 mismatches={len(mismatches)} "
            f"errors={len(errors)}"
        )
        note(line)
        assert not mismatches, mismatches[:5]
        assert not errors, errors[:5]
        await assert_settled(raw, queue)


async def _cancelled_read(queue: Any, delay: float) -> None:
    with anyio.move_on_after(delay) as scope:
        await queue.get_messages(block_for_seconds=5)
    assert scope.cancelled_caught


async def _no_blocked_reader(raw: aioredis.Redis) -> bool:
    return await blocked_readers(raw) == 0


# -- case 18 -----------------------------------------------------------------------------


async def expiring_while_no_worker_runs(
    server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger, apps: Apps, ttl: float
) -> None:
    mq, queue = ledger_client(server.url, prefix, ledger, consumer="c18", concurrency=4)
    producer = Producer(queue, "c18")
    async with mq:
        live_before = await producer.send(50)
        doomed = await producer.send(1000, ttl=ttl)
        expires_at = await redis_ms(raw) + ttl * 1000
        await sleep_until_redis_time_passes(raw, expires_at + 50)
        live = set(live_before)
        # The handler runner (reading them) and the upkeep pass (every 50 ms) race to
        # expire them: each must be counted once, by one of the two.
        async with mq.worker(block_ms=100, expire_interval=0.05) as worker:
            live |= set(await producer.send(50))
            # Handled before their TTL runs out, then removed by the upkeep: not "expired".
            short_lived = set(await producer.send(100, ttl=1.0))
            live |= short_lived
            await wait_until(lambda: live <= set(ledger.counts()), what="live messages")
            counted = lambda: worker.stats.expired + worker.maintenance.expired  # noqa: E731
            await wait_until(lambda: counted() >= 1000, within=30, what="expired counted")
            await wait_until(lambda: _length_is(raw, queue.stream, len(live) - 100), within=30,
                             what="the short-lived ones removed after their TTL")  # fmt: skip
            await wait_until(lambda: settled(raw, queue), what="acks")
        await assert_settled(raw, queue)
        assert not set(doomed) & {e["mid"] for e in ledger.events()}  # never handled
        assert counted() == 1000  # each expired message once; no handled one

        # A worker whose clock is 10 minutes ahead expires nothing live (the Redis clock
        # decides), and one 10 minutes behind handles nothing expired.
        base = app_env(server.url, prefix, APP_LEDGER=ledger.path, APP_BURST=1, APP_LEASE=5)
        fresh = set(await producer.send(100, ttl=30))
        ahead = apps.start("ledger_app", {**base, "APP_SKEW": "600"}, "clock-ahead")
        assert await apps.wait_exit(ahead, 60) == 0, apps.log_of(ahead)
        stale = await producer.send(100, ttl=0.2)
        await sleep_until_redis_time_passes(raw, await redis_ms(raw) + 250)
        behind = apps.start("ledger_app", {**base, "APP_SKEW": "-600"}, "clock-behind")
        assert await apps.wait_exit(behind, 60) == 0, apps.log_of(behind)
        assert fresh <= set(ledger.counts())
        assert not set(stale) & {e["mid"] for e in ledger.events()}
        await assert_settled(raw, queue)
        rep = check(18, live | fresh, ledger)
        report(
            rep,
            ttl=ttl,
            expired_counted=counted(),
            by_runner=worker.stats.expired,
            by_upkeep=worker.maintenance.expired,
            handled_then_timed_out=len(short_lived),
            skewed_clock_live_handled=len(fresh),
            skewed_clock_expired_handled=0,
        )
        assert not rep.duplicated


async def _length_is(raw: aioredis.Redis, stream: str, n: int) -> bool:
    return int(await raw.xlen(stream)) == n


async def test_case18_ttl_and_a_wrong_worker_clock(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger, apps: Apps
) -> None:
    await expiring_while_no_worker_runs(redis_server, prefix, raw, ledger, apps, 0.5)


@pytest.mark.slow
async def test_case18_ttl_and_a_wrong_worker_clock_2s(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger, apps: Apps
) -> None:
    await expiring_while_no_worker_runs(redis_server, prefix, raw, ledger, apps, 2.0)
