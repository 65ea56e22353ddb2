"""A worker serving many queues (issue 14): shared reads, bounded connections, fairness,
no loss at shutdown, and a start-up flat in the number of queues."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from leanmq_async import LeanMQ
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import wait_until

pytestmark = pytest.mark.anyio

MANY = 1000
FAST = {"block_ms": 200, "maintenance_interval": 0.05, "grace_period": 2.0}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A server of this module's own: CLIENT LIST counts only these tests' clients."""
    with RedisServer() as srv:
        yield srv


@pytest.fixture
async def admin(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url)
    yield client
    await client.aclose()


async def connections(admin: aioredis.Redis) -> int:
    return len(await admin.client_list())


def register(mq: LeanMQ, names: list[str], seen: Counter[Any], **options: Any) -> None:
    for name in names:

        @mq.queue(name).handler(concurrency=2, **options)
        async def handle(data: dict[str, Any]) -> None:
            seen[data["k"]] += 1


async def test_the_due_scan_answers_the_keys_due_and_the_soonest_wait(
    server: RedisServer, admin: aioredis.Redis
) -> None:
    # lua/due_scan.lua over 2,500 keys (three calls of at most 1,000): the positions of
    # the keys due now, and the ms until the soonest one not yet due; empty keys: neither.
    now = int((await admin.time())[0]) * 1000
    keys = [f"scan:{{q{i}}}:delayed" for i in range(2500)]
    for i in (3, 999, 1000, 2499):
        await admin.zadd(keys[i], {"m": now - 5})
    await admin.zadd(keys[1500], {"m": now + 60_000})
    await admin.zadd(keys[7], {"m": now + 120_000})
    async with LeanMQ(server.url, prefix="scan:") as mq:
        soonest, due = await mq.store.due_scan(keys)
    assert due == [3, 999, 1000, 2499]
    assert 55_000 < soonest <= 60_000
    async with LeanMQ(server.url, prefix="scan:") as mq:
        assert await mq.store.due_scan(keys[4:7]) == (-1, [])


async def test_a_thousand_queues_share_reads_on_few_connections(
    server: RedisServer, admin: aioredis.Redis, prefix: str
) -> None:
    seen: Counter[Any] = Counter()
    names = [f"q{i}" for i in range(MANY)]
    async with LeanMQ(server.url, prefix=prefix) as mq, LeanMQ(server.url, prefix=prefix) as sender:
        register(mq, names, seen)
        await sender.queue("warm").send_message({"k": -1})  # the sender's connection
        before = await connections(admin)
        peak = 0
        async with mq.worker(**FAST) as worker:
            assert worker.hub is not None
            sent = []
            for k in range(300):
                name = random.choice(names)
                await sender.queue(name).send_message({"k": k})
                sent.append(k)
                if k % 20 == 0:
                    peak = max(peak, await connections(admin) - before)
                    await anyio.sleep(0.005)
            await wait_until(lambda: len(seen) >= len(sent), within=30, what="all handled")
            peak = max(peak, await connections(admin) - before)
        assert sorted(seen) == sent
        assert set(seen.values()) == {1}, "each message handled exactly once"
        # The client's connections (the worker's and what it had before) stay few.
        assert peak <= 8, f"the worker held {peak} connections"


async def test_a_backlog_on_one_queue_does_not_starve_the_others(
    server: RedisServer, prefix: str
) -> None:
    order: list[str] = []
    names = [f"q{i}" for i in range(MANY)]
    async with LeanMQ(server.url, prefix=prefix) as mq:
        busy = mq.queue("busy")

        @busy.handler(concurrency=2)
        async def slow(data: dict[str, Any]) -> None:
            await anyio.sleep(0.002)
            order.append("busy")

        for name in names[1:]:

            @mq.queue(name).handler(concurrency=2)
            async def handle(data: dict[str, Any]) -> None:
                order.append("other")

        await busy.send_messages([{"k": i} for i in range(2000)])
        async with mq.worker(**FAST):
            await wait_until(lambda: order.count("busy") >= 10, what="the backlog started")
            for name in names[1:]:
                await mq.queue(name).send_message({"k": name})
            await wait_until(lambda: order.count("other") >= MANY - 1, within=60, what="others")
            # Every other queue was served while the backlog was still being drained.
            assert order.count("busy") < 2000


async def test_a_64_partition_queue_holds_few_connections(
    server: RedisServer, admin: aioredis.Redis, prefix: str
) -> None:
    seen: Counter[Any] = Counter()
    async with LeanMQ(server.url, prefix=prefix) as sender:
        # A partitioned send opens a connection per partition of the sending client:
        # another client than the worker's, whose connections are counted.
        await sender.queue("parts", partitions=64).send_messages([{"k": i} for i in range(500)])
    async with LeanMQ(server.url, prefix=prefix) as mq:
        queue = mq.queue("parts", partitions=64)

        @queue.handler(concurrency=2)
        async def handle(data: dict[str, Any]) -> None:
            seen[data["k"]] += 1

        before = await connections(admin)
        peak = 0
        async with mq.worker(**FAST) as worker:
            assert worker.hub is not None
            with anyio.fail_after(30):
                while len(seen) < 500:
                    peak = max(peak, await connections(admin) - before)
                    await anyio.sleep(0.01)
            peak = max(peak, await connections(admin) - before)
        assert sorted(seen) == list(range(500))
        assert peak <= 8, f"{peak} connections"


async def test_shutdown_mid_read_loses_nothing(server: RedisServer, prefix: str) -> None:
    """Stopped (force) at random points while claims and handlers are under way: what
    the first worker claimed and did not finish stays pending, and the next one (same
    consumer name) handles it."""
    seen: Counter[Any] = Counter()
    names = [f"q{i}" for i in range(200)]
    total = 0
    for _ in range(3):
        async with LeanMQ(server.url, prefix=prefix, consumer_name="c1") as mq:
            for name in names:

                @mq.queue(name).handler(concurrency=2)
                async def handle(data: dict[str, Any]) -> None:
                    await anyio.sleep(random.random() * 0.02)
                    seen[data["k"]] += 1

            async with mq.worker(**FAST) as worker:
                for k in range(total, total + 200):
                    await mq.queue(random.choice(names)).send_message({"k": k})
                total += 200
                await anyio.sleep(random.random() * 0.05)
                worker.stop(force=True)
    async with LeanMQ(server.url, prefix=prefix, consumer_name="c1") as mq:
        register(mq, names, seen)
        async with mq.worker(**FAST):
            await wait_until(lambda: len(seen) >= total, within=30, what="all handled")
    assert sorted(seen) == list(range(total))


class _RoundTrips:
    """Counts what redis-py sends (one packed send is one round trip)."""

    def __init__(self) -> None:
        self.count = 0
        # Patched on the base class and put back there: setting it on ``Connection`` would
        # leave a copy behind that hides every later patch of the base (other tests').
        self._original = AbstractConnection.send_packed_command

    def __enter__(self) -> _RoundTrips:
        original = self._original
        counter = self

        async def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            await original(conn, command, check_health)

        AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]


async def startup_round_trips(server: RedisServer, queues: int) -> int:
    prefix = f"start{queues}:"
    async with LeanMQ(server.url, prefix=prefix) as mq:
        register(mq, [f"q{i}" for i in range(queues)], Counter())
        worker = mq.worker(**FAST)
        with _RoundTrips() as trips:
            await worker._startup()
        return trips.count


async def test_startup_round_trips_are_flat_in_the_queue_count(server: RedisServer) -> None:
    ten = await startup_round_trips(server, 10)
    thousand = await startup_round_trips(server, MANY)
    # Groups, metadata, registry, clock, scripts: the same few round trips, pipelined.
    assert thousand <= ten + 5, (ten, thousand)


async def test_a_burst_worker_sharing_reads_drains_and_stops(
    server: RedisServer, prefix: str
) -> None:
    seen: Counter[Any] = Counter()
    names = [f"q{i}" for i in range(20)]
    async with LeanMQ(server.url, prefix=prefix) as mq:
        register(mq, names, seen)
        for i, name in enumerate(names):
            await mq.queue(name).send_messages([{"k": f"{i}-{j}"} for j in range(10)])
        with anyio.fail_after(30):
            await mq.run_worker(burst=True, shared_reads=True, **FAST)
    assert len(seen) == 200
    assert set(seen.values()) == {1}


async def test_shared_reads_survive_a_deleted_stream(
    server: RedisServer, admin: aioredis.Redis, prefix: str
) -> None:
    """A queue whose stream is deleted under the worker is created again (Recovery) and
    its later messages are handled."""
    seen: Counter[Any] = Counter()
    names = [f"q{i}" for i in range(10)]
    async with LeanMQ(server.url, prefix=prefix) as mq:
        register(mq, names, seen)
        async with mq.worker(shared_reads=True, **FAST):
            await mq.queue("q0").send_message({"k": "before"})
            await wait_until(lambda: "before" in seen, what="first handled")
            await admin.delete(mq.queue("q0").stream)
            await anyio.sleep(0.3)
            await mq.queue("q0").send_message({"k": "after"})
            await wait_until(lambda: "after" in seen, within=20, what="handled after delete")


async def test_retries_delays_and_reclaims_with_shared_reads(
    server: RedisServer, admin: aioredis.Redis, prefix: str
) -> None:
    """The shared upkeep: a failed message is retried after its backoff (the shared mover
    and its due scan), a delayed send arrives, and a message a dead consumer held is
    reclaimed after the lease (the reclaim scanner)."""
    attempts: Counter[Any] = Counter()
    done: set[Any] = set()
    names = [f"q{i}" for i in range(10)]
    async with LeanMQ(server.url, prefix=prefix) as mq:
        for name in names:

            @mq.queue(name).handler(concurrency=2, visibility_timeout=0.5, backoff=lambda _n: 0.05)
            async def handle(data: dict[str, Any]) -> None:
                attempts[data["k"]] += 1
                if data["k"] == "flaky" and attempts["flaky"] < 2:
                    raise RuntimeError("first attempt fails")
                done.add(data["k"])

        # A dead consumer's message: read (pending) by "ghost", never acked.
        dead = mq.queue("q3")
        await mq.store.ensure_groups([dead.stream], [dead.consumer_group])
        await dead.send_message({"k": "orphan"})
        await admin.xreadgroup(dead.consumer_group, "ghost", {dead.stream: ">"}, count=1)
        async with mq.worker(shared_reads=True, reclaim_interval=0.2, **FAST) as worker:
            await mq.queue("q1").send_message({"k": "flaky"})
            await mq.queue("q2").send_message({"k": "later"}, delay=0.3)
            await wait_until(lambda: done >= {"flaky", "later", "orphan"}, within=20, what="all")
            assert worker.maintenance.moved >= 2  # the retry and the delayed send
        assert attempts["flaky"] == 2
        assert attempts["orphan"] == 1


async def test_a_runner_without_free_slots_is_not_read_for(
    server: RedisServer, admin: aioredis.Redis, prefix: str
) -> None:
    """Back-pressure stays with shared reads: a busy queue's messages wait in the stream
    (not pending for this worker) until a slot is free."""
    release = anyio.Event()
    seen: Counter[Any] = Counter()
    names = [f"q{i}" for i in range(1, 10)]
    async with LeanMQ(server.url, prefix=prefix) as mq:
        register(mq, names, seen)
        busy = mq.queue("q0")

        @busy.handler(concurrency=1)
        async def blocked(data: dict[str, Any]) -> None:
            await release.wait()
            seen[data["k"]] += 1

        async with mq.worker(shared_reads=True, **FAST):
            await busy.send_messages([{"k": i} for i in range(5)])
            await mq.queue("q1").send_message({"k": "other"})
            await wait_until(lambda: "other" in seen, what="another queue served")
            await anyio.sleep(0.3)
            pending = await admin.xpending(busy.stream, busy.consumer_group)
            assert pending["pending"] == 1, pending  # the one running, no more
            release.set()
            await wait_until(lambda: len(seen) >= 6, what="the rest handled")
        assert all(seen[i] == 1 for i in range(5))


async def test_shared_reads_on_sentinel(prefix: str) -> None:
    """Through Sentinel too: the wakers' own connections come from its pool (the primary)."""
    from leanmq_async.testing_sentinel import RedisSentinelSet

    seen: Counter[Any] = Counter()
    names = [f"q{i}" for i in range(50)]
    with RedisSentinelSet() as servers:
        async with LeanMQ(servers.url, prefix=prefix) as mq:
            register(mq, names, seen)
            async with mq.worker(**FAST) as worker:
                assert worker.hub is not None
                for k in range(100):
                    await mq.queue(random.choice(names)).send_message({"k": k})
                await wait_until(lambda: len(seen) >= 100, within=30, what="all handled")
    assert sorted(seen) == list(range(100))


async def test_leases_and_failures_of_many_queues_share_connections_too(
    server: RedisServer, admin: aioredis.Redis, prefix: str
) -> None:
    """300 slow handlers at once (their leases extended meanwhile), half failing once
    (a retry each): the extensions and the retries ride the hub, few connections."""
    attempts: Counter[Any] = Counter()
    done: set[Any] = set()
    names = [f"q{i}" for i in range(300)]
    async with LeanMQ(server.url, prefix=prefix) as sender:
        for i, name in enumerate(names):
            await sender.queue(name).send_message({"k": i})
    async with LeanMQ(server.url, prefix=prefix) as mq:
        for name in names:

            @mq.queue(name).handler(concurrency=2, visibility_timeout=0.3, backoff=lambda _: 0.05)
            async def handle(data: dict[str, Any]) -> None:
                attempts[data["k"]] += 1
                await anyio.sleep(0.25)  # past a third of the lease: extended meanwhile
                if data["k"] % 2 and attempts[data["k"]] == 1:
                    raise RuntimeError("fails once")
                done.add(data["k"])

        before = await connections(admin)
        peak = 0
        async with mq.worker(**FAST) as worker:
            assert worker.hub is not None
            with anyio.fail_after(60):
                while len(done) < len(names):
                    peak = max(peak, await connections(admin) - before)
                    await anyio.sleep(0.01)
        assert peak <= 8, f"{peak} connections"
        assert worker.stats.retried == len(names) // 2
        # Extended in time: nothing was reclaimed from this (live) worker, none ran twice
        # but the failed ones.
        assert sum(attempts.values()) == len(names) + len(names) // 2


async def blocked_in_reads(admin: aioredis.Redis) -> int:
    clients = await admin.client_list()
    return sum(
        1 for c in clients if c.get("cmd") in ("xread", "xreadgroup") and "b" in c.get("flags", "")
    )


async def test_stop_abandons_the_wake_up_reads_and_reads_nothing_more(
    server: RedisServer, admin: aioredis.Redis, prefix: str
) -> None:
    release = anyio.Event()
    started: list[int] = []
    names = [f"q{i}" for i in range(10)]
    async with LeanMQ(server.url, prefix=prefix) as mq:
        for name in names:

            @mq.queue(name).handler(concurrency=4)
            async def handle(data: int) -> None:
                started.append(data)
                await release.wait()

        worker = mq.worker(block_ms=20_000, grace_period=30)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(worker.serve)
                assert worker.hub is not None
                await mq.queue("q0").send_messages(list(range(3)))
                await wait_until(lambda: len(started) == 3, what="3 handlers in flight")
                await wait_until(lambda: blocked_in_reads(admin), what="a wake-up read")
                worker.stop()
                # At once, not when the read times out (up to a second).
                await wait_until(
                    lambda: _none(blocked_in_reads(admin)), within=0.5, what="reads abandoned"
                )
                late = await mq.queue("q1").send_messages([7, 8])
                await anyio.sleep(0.3)
                assert len(started) == 3
                release.set()
        assert worker.stats.handled == 3
        (group,) = await admin.xinfo_groups(mq.queue("q1").stream)
        assert group["pending"] == 0
        assert group["lag"] == len(late)  # the two sent after stop() were never read


async def _none(count: Any) -> bool:
    return await count == 0
