"""Opt in to leanmq_async's pytest plugin, and point the app's client at its Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import shop

from leanmq_async import LeanMQ

pytest_plugins = ["leanmq_async.pytest_plugin"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def app_mq(leanmq_bind: Callable[[LeanMQ], Awaitable[LeanMQ]]) -> AsyncIterator[LeanMQ]:
    """The app's own client, bound to the plugin's private redis-server."""
    shop.shipped.clear()
    shop.flaky_attempts.clear()
    yield await leanmq_bind(shop.mq)
