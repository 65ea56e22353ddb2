"""Worker start-up while Redis is unreachable (retried for ``startup_timeout``, then exit 1
from the CLI), and burst semantics of ``async with mq.worker(burst=True)``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import ConnectionSettings, LeanMQ, Message
from leanmq_async.testing import RedisServer, free_port
from tests.reliability.proxy import Proxy
from tests.test_cli import APPS, WorkerProcess
from tests.worker_apps.common import events, settled, wait_until

pytestmark = pytest.mark.anyio


async def test_leaving_a_burst_worker_block_waits_for_the_drain(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("burst-block")
    handled: list[int] = []

    @queue.handler(concurrency=4)
    async def handle(data: int) -> None:
        await anyio.sleep(0.001)
        handled.append(data)

    await queue.send_messages(list(range(100)))
    with anyio.fail_after(30):  # a hang guard, not a timing check
        async with mq.worker(burst=True, block_ms=50, maintenance_interval=0.05) as worker:
            pass
    assert sorted(handled) == list(range(100))
    assert worker.stats.handled == 100
    assert await settled(raw, queue.stream, queue.consumer_group)


async def test_a_worker_started_while_redis_is_down_starts_when_it_comes_up(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="leanmq_async")
    server = RedisServer(free_port(), directory=str(tmp_path))
    got: list[str] = []
    try:
        async with LeanMQ(server.url, prefix="startup:") as mq:
            queue = mq.queue("late")

            @queue.handler
            async def handle(message: Message[str]) -> None:
                got.append(message.data)

            worker = mq.worker(block_ms=100, startup_timeout=60)
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.serve)
                await wait_until(
                    lambda: len(events(caplog, "worker_start_retry")) >= 2, what="retries"
                )
                assert not events(caplog, "worker_started")
                await anyio.to_thread.run_sync(server.start)
                await wait_until(lambda: bool(events(caplog, "worker_started")), within=30)
                await queue.send_message("hello")
                await wait_until(lambda: got == ["hello"], what="message handled")
                worker.stop()
        retry = events(caplog, "worker_start_retry")[0]
        assert retry.__dict__["attempt"] == 1
        assert "unreachable" in retry.__dict__["error"]
        assert not events(caplog, "worker_start_failed")
    finally:
        server.close()


async def test_replies_lost_at_start_up_are_retried(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The network drops every reply (a lost reply at SCRIPT LOAD, say): start-up times
    # out, is retried, and succeeds once the network heals.
    caplog.set_level(logging.INFO, logger="leanmq_async")
    got: list[str] = []
    with Proxy(redis_server.port) as proxy:
        settings = ConnectionSettings(socket_timeout=0.3, socket_connect_timeout=0.3)
        async with LeanMQ(proxy.url, prefix=prefix, connection=settings) as mq:
            queue = mq.queue("lossy")

            @queue.handler
            async def handle(message: Message[str]) -> None:
                got.append(message.data)

            proxy.black_hole("drop")
            worker = mq.worker(block_ms=100, startup_timeout=60)
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.serve)
                await wait_until(
                    lambda: len(events(caplog, "worker_start_retry")) >= 2, what="retries"
                )
                proxy.heal()
                await wait_until(lambda: bool(events(caplog, "worker_started")), within=30)
                await queue.send_message("hello")
                await wait_until(lambda: got == ["hello"], what="message handled")
                worker.stop()
    assert not events(caplog, "worker_start_failed")


async def test_the_cli_exits_1_when_redis_never_comes_up(prefix: str) -> None:
    environ = dict(os.environ)
    environ.update(
        LEANMQ_URL=f"redis://127.0.0.1:{free_port()}/0",
        CLI_TEST_PREFIX=prefix,
        PYTHONUNBUFFERED="1",
    )
    worker = WorkerProcess(
        ["worker_app:mq", "--startup-timeout", "1", "--log-format", "json", "--app-dir", str(APPS)],
        environ,
    )
    try:
        assert await worker.wait(within=60) == 1
        retries = worker.events("worker_start_retry")
        assert retries and retries[0]["attempt"] == 1
        (failed,) = worker.events("worker_start_failed")
        assert "stayed unreachable" in failed["reason"]
        assert not worker.events("worker_started")
    finally:
        worker.close()
