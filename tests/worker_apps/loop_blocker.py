"""Worker app: a handler that blocks the event loop once, with ``time.sleep``.

Environment: LEANMQ_TEST_URL, LEANMQ_TEST_PREFIX, APP_CONSUMER, APP_LEDGER (list of
"<consumer>:<payload>" for every run), APP_MARKER (list: "blocking" then "woke"),
APP_BLOCK_UNTIL (with APP_BLOCK=1: the first message blocks the loop until the ledger
holds this many runs, at most 30 s), APP_CONCURRENCY, APP_LEASE. Runs until SIGTERM.
"""

from __future__ import annotations

import os
import signal
import time

import anyio
import redis

from leanmq_async import LeanMQ, Message
from tests.worker_apps.common import ENV_PREFIX, ENV_URL, env_float, env_int


async def main() -> None:
    url = os.environ[ENV_URL]
    consumer = os.environ["APP_CONSUMER"]
    ledger = os.environ["APP_LEDGER"]
    marker = os.environ["APP_MARKER"]
    block = os.environ.get("APP_BLOCK") == "1"
    until = env_int("APP_BLOCK_UNTIL", 1)
    blocked: list[bool] = []
    async with LeanMQ(url, prefix=os.environ[ENV_PREFIX], consumer_name=consumer) as mq:
        queue = mq.queue("work")

        @queue.handler(
            concurrency=env_int("APP_CONCURRENCY", 5),
            visibility_timeout=env_float("APP_LEASE", 1.0),
        )
        async def handle(message: Message[int]) -> None:
            if block and not blocked:
                blocked.append(True)
                sync = redis.Redis.from_url(url)
                sync.rpush(marker, "blocking")
                deadline = time.monotonic() + 30
                # Blocks the whole event loop, as a sync call in an async handler does.
                while int(sync.llen(ledger)) < until and time.monotonic() < deadline:
                    time.sleep(0.05)  # noqa: ASYNC251 - blocks the loop on purpose
                sync.rpush(marker, "woke")
                sync.close()
            await mq.redis.rpush(ledger, f"{consumer}:{message.data}")

        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with mq.worker(block_ms=100, grace_period=10.0):
                async for _ in signals:
                    break


if __name__ == "__main__":
    anyio.run(main)
