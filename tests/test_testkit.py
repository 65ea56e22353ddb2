"""The test kit for users: the pytest plugin used by a sample app's tests, rebinding an
imported client, running the worker until idle, and instant backoff."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from leanmq_async import ConfigurationError, LeanMQ
from leanmq_async.testing import RedisServer
from leanmq_async.testkit import instant_backoff, no_backoff, run_until_idle
from leanmq_async.worker import exponential_backoff

pytestmark = pytest.mark.anyio

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "testing_example"


def test_sample_app_tests_pass_with_the_plugin() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LEANMQ_URL"}
    env["LEANMQ_URL"] = "redis://127.0.0.1:1/0"  # nothing listens: only the plugin's server works
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly"],
        cwd=SAMPLE, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


async def test_rebind_moves_an_imported_client_and_revives_a_closed_one(
    redis_server: RedisServer, prefix: str
) -> None:
    mq = LeanMQ("redis://127.0.0.1:1/0", prefix=prefix)  # built "at import", unreachable
    queue = mq.queue("q")
    await mq.aclose()
    await mq.rebind(redis_server.url)
    assert mq.url == redis_server.url
    assert mq.queue("q") is queue
    await queue.send_message({"n": 1})
    assert (await queue.get_info()).message_count == 1
    await mq.aclose()


async def test_rebind_refuses_a_borrowed_client(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        mq = LeanMQ(client=client)
        with pytest.raises(ConfigurationError, match="borrowed"):
            await mq.rebind(redis_server.url)
    finally:
        await client.aclose()


async def test_run_until_idle_reports_handled_retried_and_dead_lettered(mq: LeanMQ) -> None:
    queue = mq.queue("jobs")
    seen: dict[str, int] = {}

    @queue.handler(max_retries=2)  # the default backoff: 1 s, then 2 s
    async def handle(job: dict[str, str]) -> None:
        seen[job["id"]] = seen.get(job["id"], 0) + 1
        if job["id"] == "flaky" and seen["flaky"] < 3:
            raise ConnectionError("try again")
        if job["id"] == "bad":
            raise ValueError("bad job")

    for job in ("ok", "flaky", "bad"):
        await queue.send_message({"id": job}, message_id=job)
    report = await run_until_idle(mq, max_seconds=10)  # would need >= 3 s of backoff otherwise
    assert sorted(report.handled) == ["flaky", "ok"]
    assert sorted(report.retried) == ["bad", "bad", "flaky", "flaky"]
    assert list(report.dead_lettered) == ["bad"]
    assert "ValueError: bad job" in report.dead_lettered["bad"]
    assert [type(e) for e in report.errors["flaky"]] == [ConnectionError, ConnectionError]
    assert seen == {"ok": 1, "flaky": 3, "bad": 3}
    assert repr(report) == "WorkerReport(handled=2, retried=4, dead_lettered=1, expired=0)"
    assert handle is mq.handlers[0].func
    assert mq.handlers[0].options.backoff is exponential_backoff  # restored


async def test_instant_backoff_is_undone_after_the_block(mq: LeanMQ) -> None:
    queue = mq.queue("jobs")

    @queue.handler(concurrency=3)
    async def handle(job: int) -> None:
        pass

    with pytest.raises(RuntimeError), instant_backoff(mq):
        assert mq.handlers[0].options.backoff is no_backoff
        assert mq.handlers[0].options.concurrency == 3
        raise RuntimeError("the test failed inside the block")
    assert mq.handlers[0].options.backoff is exponential_backoff
