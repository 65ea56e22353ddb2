"""Worker app: a handler that kills its own process on a poison message.

Environment: LEANMQ_TEST_URL, LEANMQ_TEST_PREFIX, CRASHER_CONSUMER (consumer name, kept
across restarts), CRASHER_MAX_DELIVERIES, CRASHER_LEDGER (a Redis list where every call
is recorded). Runs in burst mode: exits 0 once the queue is drained, or 1 when the poison
message killed it.
"""

from __future__ import annotations

import os

import anyio

from leanmq_async import LeanMQ, Message
from tests.worker_apps.common import ENV_PREFIX, ENV_URL, env_int


async def main() -> None:
    async with LeanMQ(
        os.environ[ENV_URL],
        prefix=os.environ[ENV_PREFIX],
        consumer_name=os.environ.get("CRASHER_CONSUMER") or None,
    ) as mq:
        queue = mq.queue("crashy")
        ledger = os.environ.get("CRASHER_LEDGER", "ledger")

        @queue.handler(
            concurrency=1,
            max_deliveries=env_int("CRASHER_MAX_DELIVERIES", 2),
            visibility_timeout=30,
        )
        async def handle(message: Message[str]) -> None:
            await mq.redis.rpush(ledger, f"{message.data}:{message.delivery_count}")
            if message.data == "poison":
                os._exit(1)

        await mq.run_worker(burst=True, block_ms=100, grace_period=5)


if __name__ == "__main__":
    anyio.run(main)
