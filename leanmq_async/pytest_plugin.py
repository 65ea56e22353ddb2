"""A pytest plugin for testing apps built on leanmq_async, with a real Redis underneath.

Opt in from your top-level ``conftest.py``::

    pytest_plugins = ["leanmq_async.pytest_plugin"]

Fixtures (async ones need an async test runner: anyio's plugin, which ships with anyio,
``@pytest.mark.anyio``):

``leanmq_redis_server``
    A private ``redis-server`` for the session (:class:`~leanmq_async.testing.RedisServer`:
    a free loopback port, a temporary directory; never your own Redis).
``leanmq_url``
    Its URL, the database emptied before each test.
``leanmq``
    A fresh :class:`~leanmq_async.LeanMQ` bound to it, closed after the test.
``leanmq_bind``
    A function pointing an already-imported app's client at it (``await
    leanmq_bind(app.mq)``, :meth:`LeanMQ.rebind`); the client is released after the test.

Pair them with :func:`leanmq_async.testkit.run_until_idle`, which runs the worker until
the queues are idle (retries without backoff) and reports what was handled, retried and
dead-lettered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis

from leanmq_async.client import LeanMQ
from leanmq_async.testing import RedisServer

__all__ = ["leanmq", "leanmq_bind", "leanmq_redis_server", "leanmq_url"]


@pytest.fixture(scope="session")
def leanmq_redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the test session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def leanmq_url(leanmq_redis_server: RedisServer) -> str:
    """The private server's URL, its data emptied before the test."""
    with redis.Redis.from_url(leanmq_redis_server.url) as client:
        client.flushall()
    return leanmq_redis_server.url


@pytest.fixture
async def leanmq(leanmq_url: str) -> AsyncIterator[LeanMQ]:
    """A client bound to the private server (closed after the test)."""
    async with LeanMQ(leanmq_url) as client:
        yield client


@pytest.fixture
async def leanmq_bind(leanmq_url: str) -> AsyncIterator[Callable[[LeanMQ], Awaitable[LeanMQ]]]:
    """``await leanmq_bind(mq)`` points ``mq`` at the private server for this test."""
    bound: list[LeanMQ] = []

    async def bind(mq: LeanMQ) -> LeanMQ:
        await mq.rebind(leanmq_url)
        bound.append(mq)
        return mq

    yield bind
    for mq in bound:
        await mq.aclose()
