"""Type-checked with mypy --strict by tests/test_typing.py: every marked line must fail."""

from __future__ import annotations

import msgspec

from leanmq_async import LeanMQ


class Order(msgspec.Struct):
    order_id: int
    amount: float


mq = LeanMQ()
orders = mq.queue("orders", payload_type=Order)


async def read() -> None:
    (message,) = await orders.get_messages()
    total: float = message.data.amont  # E: attr-defined
    del total
    await orders.send_message("not an order")  # E: arg-type


@orders.handler(concurency=5)  # E: call-overload
async def handle(order: Order) -> None:
    pass


@orders.handler(expired="keep")  # E: call-overload
async def handle_other(order: Order) -> None:
    pass
