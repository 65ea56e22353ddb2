"""A Redis at ``maxmemory`` with ``noeviction``: health says what is wrong and what to do,
and a worker trims acknowledged history at once (not after ``retention``) so sends are
accepted again once everything is handled."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anyio
import pytest

from leanmq_async import LeanMQ, LeanMQError
from leanmq_async.ops.health import REDIS, check_health
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import wait_until

pytestmark = pytest.mark.anyio

# Small writes, so Redis refuses one when it is within a few KB of maxmemory.
BODY = "x" * 2_000


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    args = ["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]
    with RedisServer(args=args) as server:
        yield server


async def _fill(mq: LeanMQ, name: str) -> int:
    """Send until Redis refuses writes (OOM); return how many were accepted."""
    queue = mq.queue(name)
    for sent in range(10_000):
        try:
            await queue.send_message(BODY)
        except LeanMQError as exc:
            assert "maxmemory" in str(exc)
            return sent
    raise AssertionError("Redis never refused a write: is maxmemory set?")


async def _send_ok(mq: LeanMQ, name: str) -> bool:
    try:
        await mq.queue(name).send_message(BODY)
    except LeanMQError:
        return False
    return True


async def _health_ok(mq: LeanMQ) -> bool:
    return (await mq.health())["status"] == "ok"


async def test_a_full_redis_is_reported_and_relieved_once_everything_is_handled(
    small_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leanmq_async")
    async with LeanMQ(small_redis.url, prefix="mem:") as mq:
        handled = 0
        gate = anyio.Event()

        @mq.queue("big").handler(concurrency=20)
        async def handle(data: str) -> None:
            nonlocal handled
            await gate.wait()
            handled += 1

        # Default retention (an hour): without trimming early, the handled history
        # would keep Redis full and sends refused for that hour.
        async with mq.worker(block_ms=100, maintenance_interval=0.05, expire_interval=0.1):
            sent = await _fill(mq, "big")
            assert sent > 0

            health = await mq.health()
            assert health["status"] == "critical", health
            assert health["memory"]["policy"] == "noeviction"
            assert "maxmemory" in health["memory"]["message"]
            assert "trimmed_early" in health["memory"]["message"]
            report = await check_health(mq)
            (issue,) = [i for i in report.issues if i.check == "memory"]
            assert issue.queue == REDIS and issue.level == "critical"
            assert report.status == "critical"

            gate.set()
            await wait_until(lambda: handled >= sent, within=60, what="all handled")
            await wait_until(lambda: _health_ok(mq), within=60, what="memory relieved")
            assert await _send_ok(mq, "big")
        (early, *_) = [r for r in caplog.records if r.msg == "trimmed_early"]
        assert early.__dict__["count"] > 0
        assert "memory pressure" in early.__dict__["reason"]


async def test_a_worker_starts_on_a_full_redis_and_drains_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A worker restarted while Redis is full must start (its start-up writes nothing
    # for queues and groups that exist: noeviction refuses even no-op writes).
    caplog.set_level(logging.INFO, logger="leanmq_async")
    with RedisServer(args=["--maxmemory-policy", "noeviction"]) as server:
        async with LeanMQ(server.url, prefix="full:") as mq:
            queue, _ = await mq.create_queue_pair("big")
            await queue.send_messages([BODY] * 300)
            info = await mq.redis.info("memory")
            await mq.redis.config_set("maxmemory", int(info["used_memory"]) - 100_000)
            assert not await _send_ok(mq, "big")
            handled = 0

            @queue.handler
            async def handle(data: str) -> None:
                nonlocal handled
                handled += 1

            async with mq.worker(block_ms=100, expire_interval=0.1, startup_timeout=1):
                await wait_until(lambda: handled == 300, within=60, what="all handled")
                await wait_until(lambda: _send_ok(mq, "big"), within=60, what="sends accepted")
    assert not [r for r in caplog.records if r.msg == "worker_start_failed"]
