"""Logging without configuration: events are self-describing log records."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import textwrap

import pytest

from leanmq_async._log import get_logger
from leanmq_async.testing import RedisServer

# A real worker in an app that never configures logging: one message is dead-lettered.
APP = textwrap.dedent(
    """
    import logging, sys
    import anyio
    from leanmq_async import LeanMQ

    async def main(url, prefix, configure):
        if configure:
            logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(message)s")
        async with LeanMQ(url, prefix=prefix) as mq:
            queue = mq.queue("orders")
            done = anyio.Event()

            @queue.handler(max_retries=0)
            async def handle(data: str) -> None:
                if data == "bad":
                    raise ValueError("no such customer")
                done.set()

            async with mq.worker(block_ms=50, maintenance_interval=0.05, grace_period=1):
                await queue.send_message("bad")
                await queue.send_message("good")
                with anyio.fail_after(20):
                    await done.wait()
                    while not await mq.redis.xlen(queue.dead_letter_queue().stream):
                        await anyio.sleep(0.02)

    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] == "1")
    """
)


def _run_app(redis_server: RedisServer, prefix: str, configure: bool) -> str:
    done = subprocess.run(
        [sys.executable, "-c", APP, redis_server.url, prefix, "1" if configure else "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_unconfigured_app_prints_warnings_with_their_fields(
    redis_server: RedisServer, prefix: str
) -> None:
    stderr = _run_app(redis_server, prefix, configure=False)
    (line,) = [line for line in stderr.splitlines() if line.startswith("dead_lettered ")]
    assert "queue=orders" in line and "error_type=ValueError" in line
    assert "no such customer" in line
    assert "handled" not in stderr  # info events stay quiet until logging is configured


def test_basic_config_shows_debug_events_with_their_fields(
    redis_server: RedisServer, prefix: str
) -> None:
    stderr = _run_app(redis_server, prefix, configure=True)
    (handled,) = [line for line in stderr.splitlines() if line.startswith("DEBUG handled ")]
    assert "queue=orders" in handled and "attempt=1" in handled and "id=" in handled
    assert any(line.startswith("WARNING dead_lettered ") for line in stderr.splitlines())


def test_records_keep_the_event_name_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="leanmq_async")
    get_logger("leanmq_async.worker", consumer="c1").info(
        "handled", queue="orders", id="1-0", note="two words"
    )
    (record,) = caplog.records
    assert record.msg == "handled"  # filters and tests match the stable name
    assert record.getMessage() == "handled consumer=c1 queue=orders id=1-0 note='two words'"
    assert record.event == "handled"  # type: ignore[attr-defined]
    assert record.queue == "orders"  # type: ignore[attr-defined]
    # Records cross process boundaries pickled (logging.handlers.QueueHandler and friends).
    copied = pickle.loads(pickle.dumps(record.msg))
    assert copied == "handled" and str(copied) == record.getMessage()
