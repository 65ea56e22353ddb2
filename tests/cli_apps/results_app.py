"""An app for the results tests (tests/test_results.py): handlers that return values.

Configured by environment variables: LEANMQ_URL (required) and CLI_TEST_PREFIX.

* ``calc``: ``{"x": n}`` -> ``2 * n``; ``"fail"`` raises ValueError (dead-lettered after
  2 attempts), ``"reject"`` rejects, ``"unencodable"`` returns an object no codec encodes,
  ``"gate"`` waits until an item is pushed to ``<prefix>gate`` first;
* ``short``: like ``calc``, results kept 2 s;
* ``typed`` (``Order`` payloads): returns a ``Receipt``;
* ``modelled``: returns a pydantic model ``Total``;
* ``parts`` (2 partitions): ``{"x": n}`` -> ``n + 1``;
* the webhook route ``/add``: ``{"a": a, "b": b}`` -> ``{"sum": a + b}``.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import pydantic

from leanmq_async import LeanMQ, LeanMQWebhook, Reject

PREFIX = os.environ["CLI_TEST_PREFIX"]

mq = LeanMQ(os.environ["LEANMQ_URL"], prefix=PREFIX)
calc = mq.queue("calc")
short = mq.queue("short")


class Order(msgspec.Struct):
    item: str
    quantity: int


class Receipt(msgspec.Struct):
    item: str
    total: float


class Total(pydantic.BaseModel):
    total: float
    currency: str = "EUR"


typed = mq.queue("typed", payload_type=Order)
modelled = mq.queue("modelled")
parts = mq.queue("parts", partitions=2)
webhook = LeanMQWebhook(mq=mq)


async def compute(data: dict[str, Any]) -> Any:
    if data.get("gate"):
        await mq.redis.blpop([f"{PREFIX}gate"], timeout=30)
    if data.get("fail"):
        raise ValueError(f"cannot handle {data['x']}")
    if data.get("reject"):
        raise Reject("not my kind of number")
    if data.get("unencodable"):
        return object()
    return data["x"] * 2


@calc.handler(result_ttl=60, max_retries=1, backoff=lambda attempt: 0.0, concurrency=50)
async def double(data: dict[str, Any]) -> Any:
    return await compute(data)


@short.handler(result_ttl=2)
async def double_briefly(data: dict[str, Any]) -> Any:
    return await compute(data)


@typed.handler(result_ttl=60)
async def price(order: Order) -> Receipt:
    return Receipt(order.item, order.quantity * 2.5)


@modelled.handler(result_ttl=60)
async def total(data: dict[str, Any]) -> Total:
    return Total(total=data["a"] + data["b"])


@parts.handler(result_ttl=60)
async def increment(data: dict[str, Any]) -> int:
    return int(data["x"]) + 1


@webhook.get("/add", result_ttl=60)
async def add(data: dict[str, Any]) -> dict[str, Any]:
    return {"sum": data["a"] + data["b"]}
