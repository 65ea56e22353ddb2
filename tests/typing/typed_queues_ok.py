"""Type-checked with mypy --strict by tests/test_typing.py: this file must pass."""

from __future__ import annotations

from typing import Any, assert_type

import msgspec

from leanmq_async import LeanMQ, Message
from leanmq_async.queue import Queue


class Order(msgspec.Struct):
    order_id: int
    amount: float


mq = LeanMQ()
orders = mq.queue("orders", payload_type=Order)
assert_type(orders, Queue[Order])
assert_type(mq.queue("anything"), Queue[Any])


async def produce_and_read() -> float:
    await orders.send_message(Order(order_id=1, amount=2.0))
    await orders.send_messages([Order(order_id=2, amount=3.0)])
    messages = await orders.get_messages(count=10)
    assert_type(messages, list[Message[Order]])
    return sum(m.data.amount for m in messages)


@orders.handler(concurrency=5, max_retries=2, timeout=1.5, expired="dlq")
async def handle(message: Message[Order]) -> None:
    assert_type(message.data.amount, float)


def bare(queue: Queue) -> Queue[Any]:
    return queue
