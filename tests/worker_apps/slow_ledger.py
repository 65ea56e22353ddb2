"""Worker app: a slow handler that records every message it finished in a Redis list.

Environment: LEANMQ_TEST_URL, LEANMQ_TEST_PREFIX, APP_CONSUMER (consumer name),
APP_QUEUE (default "work"), APP_LEDGER (list of finished payloads), APP_CONCURRENCY,
APP_LEASE (visibility_timeout, s), APP_SLEEP (seconds per message). Runs until killed.
"""

from __future__ import annotations

import os

import anyio

from leanmq_async import LeanMQ, Message
from tests.worker_apps.common import ENV_PREFIX, ENV_URL, env_float, env_int


async def main() -> None:
    async with LeanMQ(
        os.environ[ENV_URL],
        prefix=os.environ[ENV_PREFIX],
        consumer_name=os.environ.get("APP_CONSUMER") or None,
    ) as mq:
        queue = mq.queue(os.environ.get("APP_QUEUE", "work"))
        ledger = os.environ.get("APP_LEDGER", "ledger")
        pause = env_float("APP_SLEEP", 0.3)

        @queue.handler(
            concurrency=env_int("APP_CONCURRENCY", 5),
            visibility_timeout=env_float("APP_LEASE", 1.0),
        )
        async def handle(message: Message[int]) -> None:
            await anyio.sleep(pause)
            await mq.redis.rpush(ledger, message.data)

        await mq.run_worker(block_ms=100)


if __name__ == "__main__":
    anyio.run(main)
