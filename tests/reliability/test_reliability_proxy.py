"""The fault-injection proxy itself: it forwards, delays, cuts and black-holes."""

from __future__ import annotations

import contextlib

import anyio
import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from leanmq_async.testing import RedisServer
from tests.reliability.proxy import Proxy

pytestmark = pytest.mark.anyio


def client(proxy: Proxy) -> aioredis.Redis:
    return aioredis.Redis.from_url(proxy.url, socket_timeout=1.0, retry_on_timeout=False)


async def test_proxy_forwards_delays_cuts_and_black_holes(redis_server: RedisServer) -> None:
    with Proxy(redis_server.port) as proxy:
        redis = client(proxy)
        try:
            assert await redis.set("proxy:k", b"v")
            assert await redis.get("proxy:k") == b"v"

            proxy.delay(0.5)  # held at least that long: a shorter wait gives up
            with anyio.move_on_after(0.2) as scope:
                await redis.ping()
            assert scope.cancelled_caught
            await redis.connection_pool.disconnect()
            proxy.delay(0)
            assert await redis.ping()

            before = proxy.accepted
            proxy.cut()  # every connection reset: a later command reconnects
            assert proxy.connections == 0
            with contextlib.suppress(redis_errors.ConnectionError):
                await redis.ping()  # may still find the reset connection
            assert await redis.ping()
            assert proxy.accepted > before

            for mode in ("freeze", "drop"):
                proxy.black_hole(mode)  # type: ignore[arg-type]
                with pytest.raises((redis_errors.TimeoutError, redis_errors.ConnectionError)):
                    await redis.execute_command("PING", retries=0)
                proxy.heal()
                await redis.connection_pool.disconnect()
                assert await redis.get("proxy:k") == b"v"
        finally:
            await redis.delete("proxy:k")
            await redis.aclose()
