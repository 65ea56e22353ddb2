"""Worker app: a rate-limited handler that records when each message started.

Environment: LEANMQ_TEST_URL, LEANMQ_TEST_PREFIX, APP_QUEUE (default "work"), APP_LEDGER
(list of "<granted ms> <started ms> <payload> <attempt> <pid>": granted is the limiter's
start on the Redis clock, started the wall clock when the handler began: the same clock,
Redis runs on this host), APP_LIMIT, APP_PER (seconds), APP_CONCURRENCY. Runs until killed.
"""

from __future__ import annotations

import os
import time

import anyio

from leanmq_async import LeanMQ, Message, RateLimit
from leanmq_async.rate_limit import granted_start
from tests.worker_apps.common import ENV_PREFIX, ENV_URL, env_float, env_int


async def main() -> None:
    async with LeanMQ(os.environ[ENV_URL], prefix=os.environ[ENV_PREFIX]) as mq:
        queue = mq.queue(os.environ.get("APP_QUEUE", "work"))
        ledger = os.environ.get("APP_LEDGER", "ledger")
        limit = RateLimit(env_int("APP_LIMIT", 50), per=env_float("APP_PER", 1.0))

        @queue.handler(concurrency=env_int("APP_CONCURRENCY", 10), rate_limit=limit)
        async def handle(message: Message[int]) -> None:
            started = int(time.time() * 1000)
            granted = granted_start()
            assert granted is not None
            line = f"{round(granted * 1000)} {started} {message.data} {message.attempt}"
            await mq.redis.rpush(ledger, f"{line} {os.getpid()}")

        await mq.run_worker(block_ms=100)


if __name__ == "__main__":
    anyio.run(main)
