"""Fixtures: private redis-server processes (never the one on 6379) and clients."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ
from leanmq_async.testing import RedisServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the long fault-injection cases")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long case: run with --slow (or `nox -s slow`)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server shared by the tests that do not break it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    """A key prefix unique to the test, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def mq(redis_server: RedisServer, prefix: str) -> AsyncIterator[LeanMQ]:
    async with LeanMQ(redis_server.url, prefix=prefix) as client:
        yield client


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the same server, to look at (or garble) keys directly."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()
