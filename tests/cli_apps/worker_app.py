"""An app for the CLI tests: one handler on "orders" that records what it handles.

Configured by environment variables, so a test can run it against a private redis-server:
LEANMQ_URL (required: never fall back to a default server), CLI_TEST_PREFIX, and
CLI_TEST_SLEEP (seconds each handler sleeps). The handler pushes the message id to
``<prefix>started`` when it begins and ``<pid>:<id>`` to ``<prefix>done`` when it ends.
"""

from __future__ import annotations

import os

import anyio

from leanmq_async import LeanMQ, Message

PREFIX = os.environ["CLI_TEST_PREFIX"]
SLEEP = float(os.environ.get("CLI_TEST_SLEEP", "0"))

mq = LeanMQ(os.environ["LEANMQ_URL"], prefix=PREFIX)
orders = mq.queue("orders")
other = mq.queue("other")
both = [orders, other]
not_a_client = 42


@orders.handler(concurrency=10)
async def handle_order(message: Message) -> None:
    await mq.redis.rpush(f"{PREFIX}started", message.id)
    await anyio.sleep(SLEEP)
    await mq.redis.rpush(f"{PREFIX}done", f"{os.getpid()}:{message.id}")
