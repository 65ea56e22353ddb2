"""A handler that blocks the event loop: the watchdog names it, and the messages the
blocked worker had read but not started are not run a second time."""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import ConfigurationError, LeanMQ
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import (
    app_env,
    events,
    list_items,
    log_tail,
    settled,
    start_app,
    wait_until,
)

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


async def test_blocked_loop_is_reported_with_the_handler(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leanmq_async")
    queue = mq.queue("blocking")
    done: list[int] = []

    @queue.handler(concurrency=2)
    async def sleepy_handler(n: int) -> None:
        if n == 1:
            # Blocks the loop until the watchdog thread has reported it (bounded).
            deadline = time.monotonic() + 20
            while not events(caplog, "loop_blocked") and time.monotonic() < deadline:
                time.sleep(0.02)  # noqa: ASYNC251 - blocks the loop on purpose
        done.append(n)

    async with mq.worker(**FAST, loop_block_threshold=0.2) as worker:
        await queue.send_messages([0, 1])
        await wait_until(lambda: len(done) == 2, within=30, what="both handled")
        await wait_until(lambda: bool(events(caplog, "loop_unblocked")), what="loop back")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    (blocked,) = events(caplog, "loop_blocked")
    assert blocked.levelno == logging.WARNING
    assert blocked.__dict__["handler"] == worker.runners[0].handler.name
    assert blocked.__dict__["handler"].endswith("sleepy_handler")
    assert "test_worker_watchdog.py" in blocked.__dict__["where"]
    assert blocked.__dict__["blocked_for"] >= 0.2
    assert blocked.__dict__["in_flight"][worker.runners[0].handler.name] >= 1
    (back,) = events(caplog, "loop_unblocked")
    assert back.__dict__["duration"] >= blocked.__dict__["blocked_for"]


async def test_no_watchdog_when_disabled(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leanmq_async")
    queue = mq.queue("blocking")

    @queue.handler()
    async def handle(n: int) -> None:
        time.sleep(0.3)  # noqa: ASYNC251 - blocks the loop on purpose

    async with mq.worker(**FAST, loop_block_threshold=None):
        await queue.send_message(1)
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    assert not events(caplog, "loop_blocked")


@pytest.mark.parametrize("bad", [0, -1.0, "1", True])
async def test_bad_threshold_is_refused(mq: LeanMQ, bad: object) -> None:
    @mq.queue("q").handler()
    async def handle(n: int) -> None:
        pass

    with pytest.raises(ConfigurationError, match="loop_block_threshold"):
        mq.worker(loop_block_threshold=bad)


async def test_messages_read_by_a_blocked_worker_are_not_run_twice(
    redis_server: RedisServer, mq: LeanMQ, raw: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """Worker A reads 5 messages; the first blocks its loop past the lease. Worker B
    reclaims and handles all 5. When A's loop comes back, the 4 it had read but not
    started are skipped (their leases are gone). The one A was running when it blocked
    does run twice: nothing can take back a handler already running."""
    queue = mq.queue("work")
    ledger, marker = f"{prefix}ledger", f"{prefix}marker"
    total = 5
    await queue.send_messages(list(range(total)))
    common = {"APP_LEDGER": ledger, "APP_MARKER": marker, "APP_CONCURRENCY": total}
    env_a = app_env(
        redis_server.url, prefix, APP_CONSUMER="a", APP_BLOCK=1, APP_BLOCK_UNTIL=total, **common
    )
    env_b = app_env(redis_server.url, prefix, APP_CONSUMER="b", **common)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    proc_a = start_app("loop_blocker", env_a, log_a)
    proc_b = None
    try:
        await wait_until(lambda: _has(raw, marker, "blocking"), within=30, what="worker A blocked")
        held = {
            c["name"].decode(): int(c["pending"])
            for c in await raw.xinfo_consumers(queue.stream, queue.consumer_group)
        }
        assert held == {"a": total}, held  # A read all five before blocking
        proc_b = start_app("loop_blocker", env_b, log_b)
        await wait_until(lambda: _has(raw, marker, "woke"), within=40, what="worker A woke")
        await wait_until(
            lambda: settled(raw, queue.stream, queue.consumer_group), within=20, what="acks"
        )
        for started in (proc_a, proc_b):
            started.send_signal(signal.SIGTERM)
        for started in (proc_a, proc_b):
            await anyio.to_thread.run_sync(started.wait)
    finally:
        for leftover in (proc_a, proc_b):
            if leftover is not None and leftover.poll() is None:
                leftover.kill()
                leftover.wait()
    detail = f"A:\n{log_tail(log_a)}\nB:\n{log_tail(log_b)}"
    assert proc_a.returncode == 0, detail
    runs = await list_items(raw, ledger)
    by_payload = Counter(item.split(":")[1] for item in runs)
    assert set(by_payload) == {str(i) for i in range(total)}, runs
    # Message 0 was running in A when the loop blocked: B ran it too after the lease.
    assert by_payload["0"] == 2, runs
    assert all(by_payload[str(i)] == 1 for i in range(1, total)), (runs, detail)
    assert "loop_blocked" in log_a.read_text(), detail


async def _has(raw: aioredis.Redis, key: str, item: str) -> bool:
    return item in await list_items(raw, key)
