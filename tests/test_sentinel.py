"""Redis Sentinel: the client follows the primary; a demoted primary's READONLY is a
connection error (retried by the worker), never a handler's failure.

One module-scoped set (a primary, a replica, three sentinels on private loopback ports)
serves the tests; the failover tests change its primary and come last.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from leanmq_async import (
    ConfigurationError,
    Durability,
    LeanMQ,
    LeanMQConnectionError,
    NotReplicatedError,
    RedisOperationError,
)
from leanmq_async.testing import find_redis_server
from leanmq_async.testing_cluster import RedisSentinelSet
from tests.worker_apps.common import events, wait_until

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 200, "maintenance_interval": 0.05, "grace_period": 5.0}


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[RedisSentinelSet]:
    try:
        find_redis_server()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with RedisSentinelSet() as servers:
        yield servers


@pytest.fixture
async def smq(sentinel_set: RedisSentinelSet, prefix: str) -> AsyncIterator[LeanMQ]:
    async with LeanMQ(sentinel_set.url, prefix=prefix) as client:
        yield client


async def send_all(queue: Any, items: Iterable[int], errors: list[BaseException]) -> None:
    """Send each item, again after a connection error (a failover may be under way)."""
    for item in items:
        while True:
            try:
                await queue.send_message(item)
                break
            except LeanMQConnectionError as exc:
                errors.append(exc)
                await anyio.sleep(0.05)


async def test_client_talks_to_the_primary_the_sentinels_name(
    sentinel_set: RedisSentinelSet, smq: LeanMQ, prefix: str
) -> None:
    queue, _ = await smq.create_queue_pair("basics")
    ids = await queue.send_messages(["a", "b"])
    got = await queue.get_messages(count=5)
    assert [m.id for m in got] == ids
    assert await queue.acknowledge_messages(ids) == 2
    assert isinstance(smq.redis, aioredis.Redis)
    pool = smq.redis.connection_pool
    assert pool.max_connections == smq.connection_settings.max_connections
    assert pool.connection_kwargs["retry"].get_retries() == 0  # no command retries
    assert pool.connection_kwargs.get("decode_responses") is False
    primary = sentinel_set.current_primary()
    with_keywords = LeanMQ(
        sentinels=sentinel_set.sentinel_addresses, service_name="mymaster", prefix=prefix
    )
    async with with_keywords:
        assert [q.name for q in await with_keywords.list_queues()] == ["basics", "basics:dlq"]
        assert await with_keywords.redis.info("server") is not None
    assert primary.port == sentinel_set.master_port()


async def test_readonly_replica_is_a_connection_error(
    sentinel_set: RedisSentinelSet, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain client on a replica (a demoted primary): every write is refused with
    READONLY, which LeanMQ reports as a connection error, not an operation error."""
    caplog.set_level(logging.INFO, logger="leanmq_async")
    replica = next(s for s in sentinel_set.servers if s is not sentinel_set.current_primary())
    calls: list[int] = []
    async with LeanMQ(replica.url, prefix=prefix) as mq:
        queue = mq.queue("ro")
        with pytest.raises(LeanMQConnectionError) as plain:
            await queue.send_message(1)
        assert isinstance(plain.value.__cause__, redis_errors.ReadOnlyError)
        with pytest.raises(LeanMQConnectionError):
            await queue.send_message(2, ttl=60)  # the send script
        with pytest.raises(LeanMQConnectionError):
            await queue.get_messages()  # XREADGROUP writes a pending entry
        try:
            await queue.send_message(3)
        except RedisOperationError:  # pragma: no cover - the point of the test
            pytest.fail("READONLY reported as an operation error")
        except LeanMQConnectionError:
            pass

        @queue.handler
        async def handle(n: int) -> None:
            calls.append(n)

        worker = mq.worker(**FAST)
        with pytest.raises(BaseExceptionGroup) as group:  # it cannot create its groups
            async with worker:
                pass
        assert group.value.subgroup(LeanMQConnectionError) is not None
    assert calls == []


async def test_per_call_durability_waits_for_the_replica(
    sentinel_set: RedisSentinelSet, smq: LeanMQ
) -> None:
    """A client without a default: each call says how long to wait, and for how many."""
    queue, _ = await smq.create_queue_pair("durable")
    primary = sentinel_set.current_primary()
    (replica,) = [s for s in sentinel_set.servers if s is not primary]
    one = Durability(replicas=1, timeout_ms=1000)
    sid = await queue.send_message("one", durability=one)
    ids = await queue.send_messages(["two", "three"], ttl=60, durability=one)
    async with aioredis.Redis(port=replica.port) as node:
        # Confirmed by the replica: it has the entries as soon as the calls returned.
        assert [e[0].decode() for e in await node.xrange(queue.stream)] == [sid, *ids]

    with pytest.raises(NotReplicatedError) as two:  # there is one replica
        await queue.send_message("four", durability=Durability(replicas=2, timeout_ms=100))
    assert two.value.acknowledged == 1
    (written,) = two.value.stream_ids
    assert f"written 1 message(s) ({written}) to the primary" in str(two.value)
    assert "only 1 replica(s) acknowledged within 100 ms (wanted 2)" in str(two.value)

    version = (await smq.redis.info("server"))["redis_version"]
    if tuple(int(x) for x in version.split(".")[:2]) < (7, 2):
        with pytest.raises(ConfigurationError, match="WAITAOF"):
            await queue.send_message("five", durability=Durability(replicas=1, aof=True))
    assert [m.id for m in await queue.peek_messages(10)] == [sid, *ids, written]


async def _follow(
    sentinel_set: RedisSentinelSet,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
    fail: Any,
) -> dict[str, Any]:
    """Run a worker through ``fail()`` (a failover); every message sent before and after
    it is handled, nothing is dead-lettered, no Redis error reaches a handler."""
    caplog.set_level(logging.INFO, logger="leanmq_async")
    handled: list[int] = []
    send_errors: list[BaseException] = []
    async with LeanMQ(sentinel_set.url, prefix=prefix) as mq:
        queue, dlq = await mq.create_queue_pair("jobs")

        @queue.handler(concurrency=5, visibility_timeout=2.0)
        async def handle(n: int) -> None:
            handled.append(n)

        with anyio.fail_after(90):
            async with mq.worker(**FAST) as worker:
                await send_all(queue, range(20), send_errors)
                await wait_until(lambda: set(handled) == set(range(20)), what="before")
                old, new = await anyio.to_thread.run_sync(fail)
                await send_all(queue, range(20, 40), send_errors)
                await wait_until(
                    lambda: set(handled) == set(range(40)), within=60, what="after failover"
                )
                await wait_until(lambda: _settled(queue), within=30, what="acks")
        assert (await dlq.get_info()).message_count == 0
        assert (await mq.redis.info("server"))["tcp_port"] == new.port
    assert (worker.stats.failed, worker.stats.dead_lettered) == (0, 0)
    assert all(isinstance(e, LeanMQConnectionError) for e in send_errors)
    # Redis errors of the worker's own steps were connection errors: retried, logged as
    # such, never as failed fetches, settles or acks.
    for name in ("fetch_failed", "settle_failed", "ack_failed", "retry_skipped"):
        assert events(caplog, name) == [], name
    return {
        "old": old,
        "new": new,
        "handled": handled,
        "unavailable": len(events(caplog, "redis_unavailable")),
        "send_errors": send_errors,
    }


async def _settled(queue: Any) -> bool:
    return bool((await queue.get_info()).pending_messages == 0)


async def test_worker_follows_a_failover_past_readonly(
    sentinel_set: RedisSentinelSet, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SENTINEL FAILOVER: the old primary lives on as a replica; the worker's connections
    to it are refused (READONLY, or UNBLOCKED for its blocked read) and it moves on."""
    result = await _follow(sentinel_set, prefix, caplog, sentinel_set.failover)
    assert result["old"].running  # demoted, not dead: the READONLY path was taken
    assert result["unavailable"] >= 1


@pytest.mark.slow
async def test_worker_follows_the_sentinels_own_reconfiguration(
    sentinel_set: RedisSentinelSet, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The same, with the sentinels demoting the old primary themselves (about 10 s
    after the promotion; they also disconnect its clients then)."""
    await _follow(sentinel_set, prefix, caplog, lambda: sentinel_set.failover(demote_now=False))


async def test_worker_follows_a_crashed_primary(
    sentinel_set: RedisSentinelSet, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL of the primary: the sentinels promote the replica; the worker reconnects."""
    result = await _follow(sentinel_set, prefix, caplog, sentinel_set.kill_primary)
    assert not result["old"].running
    assert result["unavailable"] >= 1
