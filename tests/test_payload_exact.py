"""The payload rule: a payload arrives exactly as sent, or the send is refused.

Untyped values (dicts, lists, scalars) must be JSON-native; a msgspec Struct or dataclass
may carry typed fields (datetime, Decimal, UUID, bytes, tuple, set) that a handler
annotated with its type decodes back exactly. NaN is refused everywhere, infinity by JSON.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, MessageEncodeError
from leanmq_async.envelope import Codec
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import settled, wait_until

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}
WHEN = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


class Invoice(msgspec.Struct):
    when: dt.datetime
    amount: decimal.Decimal
    ref: uuid.UUID
    blob: bytes
    pair: tuple[int, str]
    tags: set[str]
    day: dt.date
    ratio: float = 0.5


@dataclasses.dataclass
class Slot:
    at: dt.datetime
    codes: frozenset[int]


def invoice(**changes: Any) -> Invoice:
    base = Invoice(
        when=WHEN,
        amount=decimal.Decimal("10.10"),
        ref=uuid.UUID(int=7),
        blob=b"\x00\xff",
        pair=(1, "a"),
        tags={"x", "y"},
        day=dt.date(2024, 5, 6),
    )
    return msgspec.structs.replace(base, **changes)


# (payload, path named in the error, what it says): refused by JSON.
REFUSED_JSON = [
    ({"x": float("nan")}, "$.x", "nan"),
    ({"x": [1.5, float("inf")]}, "$.x[1]", "inf"),
    (float("-inf"), "$", "-inf"),
    ({"items": [1, 2, (3, 4)]}, "$.items[2]", "tuple"),
    ((1, 2), "$", "tuple"),
    ({"s": {1, 2}}, "$.s", "set"),
    ({"s": frozenset({1})}, "$.s", "frozenset"),
    ({"b": b"\x00"}, "$.b", "bytes"),
    ({"b": bytearray(b"x")}, "$.b", "bytearray"),
    ({1: "one"}, "$", "key 1"),
    ({"outer": {2.5: "x"}}, "$.outer", "key 2.5"),
    ({"when": WHEN}, "$.when", "datetime"),
    ({"day": dt.date(2024, 1, 1)}, "$.day", "date"),
    ({"d": decimal.Decimal("1.10")}, "$.d", "Decimal"),
    ({"u": uuid.UUID(int=1)}, "$.u", "UUID"),
    ({"inner": invoice()}, "$.inner", "Invoice"),  # a Struct inside untyped data
    ([invoice()], "$[0]", "Invoice"),
    (invoice(ratio=float("nan")), "$.ratio", "float"),  # NaN in a typed field
]


@pytest.mark.parametrize(("payload", "path", "what"), REFUSED_JSON)
def test_json_refuses_what_it_cannot_carry_exactly(payload: Any, path: str, what: str) -> None:
    with pytest.raises(MessageEncodeError) as info:
        Codec("json").encode(payload)
    text = str(info.value)
    assert f"{path} " in text or f"`{path}`" in text, text
    assert what in text, text
    assert "msgspec Struct or dataclass" in text  # says what to do


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"x": float("nan")}, "$.x"),
        ({"t": (1, 2)}, "$.t"),
        ({"s": {1}}, "$.s"),
        ({"when": dt.datetime(2024, 1, 1)}, "$.when"),  # naive: msgpack writes a str
        ({"d": decimal.Decimal("1")}, "$.d"),
    ],
)
def test_msgpack_refuses_what_it_changes(payload: Any, path: str) -> None:
    with pytest.raises(MessageEncodeError, match=rf"\{path} "):
        Codec("msgpack").encode(payload)


@pytest.mark.parametrize(
    "payload", [{"b": b"\x00\xff"}, {1: "int keys"}, {"i": float("inf")}, {"when": WHEN}]
)
def test_msgpack_carries_exactly_what_json_cannot(payload: Any) -> None:
    Codec("msgpack").encode(payload)  # bytes, int keys, inf, aware datetimes round-trip


@pytest.mark.parametrize("name", ["json", "msgpack"])
@pytest.mark.parametrize(
    "payload",
    [
        {"a": [1, 2.5, None, True, "é", {"b": -0.0}], "big": 2**62},
        invoice(),
        Slot(at=WHEN, codes=frozenset({1, 2})),
        "text",
        3.25,
        [],
    ],
)
def test_exact_payloads_are_accepted(name: Any, payload: Any) -> None:
    Codec(name).encode(payload)


@pytest.mark.anyio
async def test_refused_send_writes_nothing(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue, _ = await mq.create_queue_pair("refused")
    with pytest.raises(MessageEncodeError, match=r"\$\.v\[1\] is nan"):
        await queue.send_message({"v": [1.0, float("nan")]})
    with pytest.raises(MessageEncodeError, match=r"\$\.when is a datetime"):
        await queue.send_messages([{"ok": 1}, {"when": WHEN}])
    assert await raw.xlen(queue.stream) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
async def test_typed_payload_round_trips_exactly_through_a_worker(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, serializer: Any
) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix, serializer=serializer) as mq:
        queue = mq.queue("typed")
        slots = mq.queue("slots")
        got: list[Any] = []

        @queue.handler()
        async def handle(data: Invoice) -> None:
            got.append(data)

        @slots.handler()
        async def handle_slot(data: Slot) -> None:
            got.append(data)

        sent = [invoice(), invoice(pair=(2, "b"), amount=decimal.Decimal("-0.001"))]
        slot = Slot(at=WHEN, codes=frozenset({3}))
        async with mq.worker(**FAST):
            await queue.send_messages(sent)
            await slots.send_message(slot)
            await wait_until(lambda: len(got) == 3, what="3 typed messages handled")
            await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
        invoices = [g for g in got if isinstance(g, Invoice)]
        assert sorted(invoices, key=repr) == sorted(sent, key=repr)
        assert [g for g in got if isinstance(g, Slot)] == [slot]
        for g in got:
            if isinstance(g, Invoice):
                assert type(g.amount) is decimal.Decimal
                assert type(g.pair) is tuple
                assert type(g.tags) is set
                assert g.when.tzinfo is not None
        assert await raw.xlen(queue.dead_letter_queue().stream) == 0
