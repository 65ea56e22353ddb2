"""Pydantic payloads and typed queues: what handlers and readers receive, and what is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import pydantic
import pytest

from leanmq_async import ConfigurationError, LeanMQ, Message, MessageEncodeError
from tests.worker_apps.common import wait_until

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


class Item(pydantic.BaseModel):
    sku: str
    qty: int


class Order(pydantic.BaseModel):
    order_id: int
    items: list[Item]


class Refund(msgspec.Struct):
    order_id: int
    amount: float


class NotAPayload:
    """A plain class: neither msgspec nor pydantic can build it from JSON."""


def zero(_retry: int) -> float:
    return 0.0


async def test_pydantic_handler_end_to_end_and_invalid_payload_dead_lettered_with_path(
    mq: LeanMQ,
) -> None:
    queue = mq.queue("orders")
    got: list[Any] = []

    @queue.handler(backoff=zero)
    async def handle(order: Order) -> None:
        got.append(order)

    await queue.send_message(Order(order_id=1, items=[Item(sku="a", qty=2)]))
    await queue.send_message({"order_id": 2, "items": [{"sku": "b", "qty": "many"}]})
    async with mq.worker(**FAST) as worker:
        await wait_until(
            lambda: worker.stats.handled + worker.stats.dead_lettered == 2, what="both settled"
        )
    assert got == [Order(order_id=1, items=[Item(sku="a", qty=2)])]
    assert isinstance(got[0], Order)
    (dead,) = await queue.dead_letter_queue().peek_messages()
    assert dead.dead_letter is not None
    assert "$.items[0].qty" in dead.dead_letter.reason
    assert dead.data == {"order_id": 2, "items": [{"sku": "b", "qty": "many"}]}


async def test_pydantic_message_annotation_and_msgpack(redis_server: Any, prefix: str) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix, serializer="msgpack") as mq:
        queue = mq.queue("orders")
        got: list[Message[Order]] = []

        @queue.handler
        async def handle(message: Message[Order]) -> None:
            got.append(message)

        await queue.send_messages([Order(order_id=n, items=[]) for n in range(3)])
        async with mq.worker(**FAST):
            await wait_until(lambda: len(got) == 3, what="three handled")
    assert sorted(m.data.order_id for m in got) == [0, 1, 2]
    assert all(isinstance(m.data, Order) for m in got)


@pytest.mark.parametrize("annotation", [NotAPayload, list[NotAPayload], Message[NotAPayload]])
async def test_undecodable_annotation_is_refused_at_decoration(mq: LeanMQ, annotation: Any) -> None:
    async def handle(payload: Any) -> None:
        pass

    handle.__annotations__["payload"] = annotation
    with pytest.raises(ConfigurationError, match="NotAPayload is neither"):
        mq.queue("q").handler(handle)
    assert mq.handlers == []


async def test_typed_queue_reads_decoded_and_validated_and_dead_letters_the_rest(
    mq: LeanMQ,
) -> None:
    refunds = mq.queue("refunds", payload_type=Refund)
    assert mq.queue("refunds") is refunds
    assert refunds.payload_type is Refund
    await mq.create_queue_pair("refunds")
    await refunds.send_message(Refund(order_id=1, amount=2.5))
    await refunds.send_message({"order_id": "x", "amount": 1})  # type: ignore[arg-type]
    messages = await refunds.get_messages(count=10)
    assert [m.data for m in messages] == [Refund(order_id=1, amount=2.5)]
    (dead,) = await refunds.dead_letter_queue().peek_messages()
    assert dead.dead_letter is not None
    assert "$.order_id" in dead.dead_letter.reason


async def test_typed_queue_checks_handlers_and_redeclaration(mq: LeanMQ) -> None:
    orders = mq.queue("orders", payload_type=Order)

    async def wrong(refund: Refund) -> None:
        pass

    with pytest.raises(ConfigurationError, match="carries"):
        orders.handler(wrong)
    with pytest.raises(ConfigurationError, match="carries"):

        @orders.handler
        async def wrong_message(message: Message[Refund]) -> None:
            pass

    got: list[Any] = []

    @orders.handler
    async def untyped(order):  # type: ignore[no-untyped-def]  # takes the queue's type
        got.append(order)

    assert mq.handlers[0].payload_type is Order
    with pytest.raises(ConfigurationError, match="already declared with payload_type"):
        mq.queue("orders", payload_type=Refund)
    with pytest.raises(ConfigurationError, match="not decodable"):
        mq.queue("other", payload_type=NotAPayload)

    await orders.send_message(Order(order_id=5, items=[]))
    async with mq.worker(**FAST):
        await wait_until(lambda: len(got) == 1, what="handled")
    assert got == [Order(order_id=5, items=[])]


async def test_generic_payload_type_redeclared_and_nested_models_sent(mq: LeanMQ) -> None:
    batches = mq.queue("batches", payload_type=list[Item])
    assert mq.queue("batches", payload_type=list[Item]) is batches  # equal, not identical
    await mq.create_queue_pair("batches")
    await batches.send_message([Item(sku="a", qty=1), Item(sku="b", qty=2)])
    (message,) = await batches.get_messages()
    assert message.data == [Item(sku="a", qty=1), Item(sku="b", qty=2)]
    plain = mq.queue("plain")
    await mq.create_queue_pair("plain")
    # Untyped, the model would arrive as a dict: refused (issue 11, payloads arrive exactly).
    with pytest.raises(MessageEncodeError, match=r"\$\.item"):
        await plain.send_message({"item": Item(sku="c", qty=3)})
    assert await plain.peek_messages() == []


async def test_dataclass_payload_type_still_uses_msgspec(mq: LeanMQ) -> None:
    @dataclass
    class Point:
        x: int
        y: int

    points = mq.queue("points", payload_type=Point)
    await mq.create_queue_pair("points")
    await points.send_message(Point(1, 2))
    (message,) = await points.get_messages()
    assert message.data == Point(1, 2)
