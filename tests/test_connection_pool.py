"""The connection pool: waits in order, bounded by pool_timeout, never loses a connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.exceptions as redis_errors

from leanmq_async import ConnectionSettings, LeanMQ, LeanMQConnectionError
from leanmq_async.connection import FairConnectionPool, build_client
from leanmq_async.testing import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool(redis_server: RedisServer) -> AsyncIterator[FairConnectionPool]:
    client = build_client(redis_server.url, ConnectionSettings(max_connections=2, pool_timeout=5))
    pool = client.connection_pool
    assert isinstance(pool, FairConnectionPool)
    yield pool
    await client.aclose()


def _settle(pool: FairConnectionPool) -> tuple[int, int]:
    return len(pool._in_use_connections), len(pool._available_connections)


async def test_waiters_are_served_in_arrival_order(pool: FairConnectionPool) -> None:
    held = [await pool.get_connection(), await pool.get_connection()]
    served: list[int] = []

    async def wait_turn(n: int) -> None:
        connection = await pool.get_connection()
        served.append(n)
        await asyncio.sleep(0)
        await pool.release(connection)

    tasks = []
    for n in range(6):
        tasks.append(asyncio.create_task(wait_turn(n)))
        await asyncio.sleep(0)  # each one queues before the next arrives
    assert len(pool._waiters) == 6
    for connection in held:
        await pool.release(connection)
    # A caller arriving now queues behind the six, even though a release just happened.
    late = asyncio.create_task(wait_turn(99))
    await asyncio.gather(*tasks, late)
    assert served == [0, 1, 2, 3, 4, 5, 99]
    assert _settle(pool) == (0, 2)


async def test_wait_is_bounded_by_pool_timeout(redis_server: RedisServer) -> None:
    settings = ConnectionSettings(max_connections=2, pool_timeout=0.2)
    async with LeanMQ(redis_server.url, connection=settings) as mq:
        pool = mq.redis.connection_pool
        held = [await pool.get_connection(), await pool.get_connection()]
        with pytest.raises(LeanMQConnectionError, match="No connection available"):
            await mq.queue("pool").send_message({"n": 1})
        assert not pool._waiters  # type: ignore[attr-defined]
        for connection in held:
            await pool.release(connection)
        assert await mq.health() == {"status": "ok", "redis": True}


async def test_timeout_on_the_pool_itself_is_redis_pys_connection_error(
    redis_server: RedisServer,
) -> None:
    client = build_client(redis_server.url, ConnectionSettings(max_connections=2, pool_timeout=0.1))
    pool = client.connection_pool
    held = [await pool.get_connection(), await pool.get_connection()]
    with pytest.raises(redis_errors.ConnectionError, match="No connection available"):
        await pool.get_connection()
    for connection in held:
        await pool.release(connection)
    await client.aclose()


async def test_a_waiter_cancelled_after_being_handed_a_connection_passes_it_on(
    pool: FairConnectionPool,
) -> None:
    held = [await pool.get_connection(), await pool.get_connection()]
    first = asyncio.create_task(pool.get_connection())
    second = asyncio.create_task(pool.get_connection())
    await asyncio.sleep(0)
    assert len(pool._waiters) == 2
    await pool.release(held[0])  # handed to `first`, which has not resumed yet
    first.cancel()  # ... and is cancelled before it does
    with pytest.raises(asyncio.CancelledError):
        await first
    got = await asyncio.wait_for(second, 5)  # the connection went on to `second`
    assert got is held[0]
    await pool.release(got)
    await pool.release(held[1])
    assert _settle(pool) == (0, 2)
    assert not pool._waiters


async def test_a_cancelled_waiter_leaves_the_line(pool: FairConnectionPool) -> None:
    held = [await pool.get_connection(), await pool.get_connection()]
    waiter = asyncio.create_task(pool.get_connection())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not pool._waiters
    for connection in held:
        await pool.release(connection)
    assert _settle(pool) == (0, 2)


async def test_many_callers_share_a_small_pool_without_errors(
    redis_server: RedisServer, prefix: str
) -> None:
    settings = ConnectionSettings(max_connections=4, pool_timeout=30)
    async with LeanMQ(redis_server.url, prefix=prefix, connection=settings) as mq:
        redis: Any = mq.redis

        async def caller(n: int) -> None:
            for i in range(25):
                await redis.incr(f"{prefix}counter")
                if i % 7 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*(caller(n) for n in range(200)))
        assert int(await redis.get(f"{prefix}counter")) == 200 * 25
        pool = redis.connection_pool
        assert len(pool._in_use_connections) == 0
        assert len(pool._available_connections) <= 4
        assert not pool._waiters
