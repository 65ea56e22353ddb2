"""Fixtures of the fault-injection suite, and the session summary of its figures.

Each case prints one ``reliability case N: confirmed=… handled=… lost=… duplicated=…``
line (``pytest -s`` shows it as it runs); the lines are printed again in the terminal
summary at the end of the session, so they also appear in normal CI output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from leanmq_async.testing import RedisServer
from tests.reliability.harness import SUMMARY, Apps, Ledger


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SUMMARY:
        return
    terminalreporter.section("reliability figures")
    for line in sorted(SUMMARY, key=lambda s: int(s.split()[2].rstrip(":"))):
        terminalreporter.write_line(line)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    book = Ledger(tmp_path / "ledger.jsonl")
    yield book
    book.close()


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Apps]:
    """Worker subprocesses of the test; any left running are SIGKILLed at the end."""
    runner = Apps(tmp_path)
    yield runner
    runner.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, free to be killed, wiped or restarted."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def private_raw(private_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_redis.url)
    yield client
    await client.aclose()
