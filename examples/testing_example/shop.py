"""A tiny app: the client is built at import, as in a real service (reads LEANMQ_URL)."""

from __future__ import annotations

import msgspec

from leanmq_async import LeanMQ, Reject

mq = LeanMQ(prefix="shop:")


class Order(msgspec.Struct):
    order_id: int
    sku: str
    qty: int


orders = mq.queue("orders", payload_type=Order)
shipped: list[int] = []  # stands in for a database
flaky_attempts: dict[int, int] = {}


@orders.handler(max_retries=3)
async def ship(order: Order) -> None:
    if order.qty <= 0:
        raise Reject(f"order {order.order_id}: quantity must be positive")
    if order.sku == "flaky":  # fails twice, then works: retried without waiting in tests
        flaky_attempts[order.order_id] = flaky_attempts.get(order.order_id, 0) + 1
        if flaky_attempts[order.order_id] < 3:
            raise ConnectionError("warehouse API timed out")
    shipped.append(order.order_id)


async def place_order(order_id: int, sku: str, qty: int) -> str:
    """What the web layer calls; returns the message id."""
    message_id = f"order-{order_id}"
    await orders.send_message(Order(order_id, sku, qty), message_id=message_id)
    return message_id
