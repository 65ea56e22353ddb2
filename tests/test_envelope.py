"""The wire format and its codecs: encoding, limits, decoding of good and garbled entries."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from leanmq_async import (
    ConfigurationError,
    LeanMQ,
    MessageDecodeError,
    MessageEncodeError,
    MessageTooLargeError,
)
from leanmq_async.envelope import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Codec,
    decode_entry,
    decode_payload,
    get_codec,
)
from leanmq_async.testing import RedisServer


class Order(msgspec.Struct):
    order_id: int
    items: list[str]
    note: str | None = None


# -- codec, no Redis ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_encode_decode_round_trip(name: Any) -> None:
    codec = Codec(name)
    mid, body = codec.encode({"a": [1, 2.5, None, True, "é"]}, headers={"trace": "abc"})
    uuid.UUID(mid)  # a uuid by default
    entry = decode_entry({codec.field: body}, DEFAULT_MAX_MESSAGE_SIZE)
    assert entry.message_id == mid
    assert entry.headers == {"trace": "abc"}
    assert entry.attempts == 0
    assert entry.expires_at_ms is None
    assert entry.target_group is None
    assert entry.is_msgpack is (name == "msgpack")
    assert decode_payload(entry) == {"a": [1, 2.5, None, True, "é"]}


def test_json_envelope_layout() -> None:
    _, body = Codec("json").encode({"x": 1}, message_id="m-1")
    env = msgspec.json.decode(body)
    assert env["id"] == "m-1"
    assert isinstance(env["ts"], float)
    assert env["p"] == {"x": 1}
    assert "h" not in env  # empty headers are omitted


def test_struct_payload_decodes_as_dict_or_as_struct() -> None:
    codec = Codec("json")
    _, body = codec.encode(Order(order_id=7, items=["a", "b"]))
    entry = decode_entry({b"j": body}, DEFAULT_MAX_MESSAGE_SIZE)
    assert decode_payload(entry) == {"order_id": 7, "items": ["a", "b"], "note": None}
    assert decode_payload(entry, Order) == Order(order_id=7, items=["a", "b"])


def test_payload_validation_error_names_the_path() -> None:
    _, body = Codec("json").encode({"order_id": "seven", "items": []})
    entry = decode_entry({b"j": body}, DEFAULT_MAX_MESSAGE_SIZE)
    with pytest.raises(MessageDecodeError, match="order_id"):
        decode_payload(entry, Order)


def test_datetimes_and_uuids_round_trip_in_a_struct() -> None:
    class Stamp(msgspec.Struct):
        when: dt.datetime
        uid: uuid.UUID

    stamp = Stamp(when=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), uid=uuid.UUID(int=5))
    _, body = Codec("json").encode(stamp)
    entry = decode_entry({b"j": body}, DEFAULT_MAX_MESSAGE_SIZE)
    assert decode_payload(entry, Stamp) == stamp
    # Untyped, they would arrive as strings: refused (tests/test_payload_exact.py).
    with pytest.raises(MessageEncodeError, match=r"\$\.when is a datetime"):
        Codec("json").encode({"when": stamp.when})


@pytest.mark.parametrize("payload", [object(), {"f": lambda: 1}, {1j}, {object(): 1}])
@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_unencodable_payload(name: Any, payload: Any) -> None:
    with pytest.raises(MessageEncodeError) as info:
        Codec(name).encode(payload)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("headers", [{"n": 1}, {1: "x"}, {"b": b"x"}, {"none": None}])
def test_headers_must_be_str_to_str(headers: Any) -> None:
    with pytest.raises(MessageEncodeError, match="headers"):
        Codec("json").encode({}, headers=headers)


@pytest.mark.parametrize("message_id", ["", 5, b"id"])
def test_bad_message_id(message_id: Any) -> None:
    with pytest.raises(ConfigurationError):
        Codec("json").encode({}, message_id=message_id)


def test_size_limit() -> None:
    codec = Codec("json", max_message_size=200)
    codec.encode("x" * 40)  # the envelope adds under 100 bytes
    with pytest.raises(MessageTooLargeError, match="max_message_size=200") as info:
        codec.encode("x" * 200)
    assert isinstance(info.value, ValueError)
    with pytest.raises(MessageTooLargeError):
        Codec("json").encode("x" * DEFAULT_MAX_MESSAGE_SIZE)


@pytest.mark.parametrize("size", [0, -1])
def test_max_message_size_must_be_positive(size: int) -> None:
    with pytest.raises(ConfigurationError):
        Codec("json", max_message_size=size)


def test_msgpack_refuses_integers_over_64_bits() -> None:
    with pytest.raises(MessageEncodeError):
        Codec("msgpack").encode({"n": 2**80})


def test_unknown_serializer() -> None:
    with pytest.raises(ConfigurationError, match="serializer"):
        Codec("pickle")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        LeanMQ("redis://127.0.0.1:1", serializer="yaml")  # type: ignore[arg-type]


def test_codecs_are_shared() -> None:
    assert get_codec("json") is get_codec("json")
    assert get_codec("json", 10) is not get_codec("json")
    assert get_codec("msgpack", 10).max_message_size == 10


def test_scripts_fields_are_decoded() -> None:
    _, body = Codec("json").encode(1)
    entry = decode_entry(
        {b"j": body, b"a": b"2", b"x": b"1700000000123", b"g": b"billing"},
        DEFAULT_MAX_MESSAGE_SIZE,
    )
    assert entry.attempts == 2
    assert entry.expires_at_ms == 1700000000123
    assert entry.target_group == "billing"


_GOOD = Codec("json").encode({"ok": 1})[1]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (None, "no data"),
        ({}, "no data"),
        ({b"data": b"{}"}, "not a leanmq message"),
        ({b"j": b"\xff\xfe\x00garbage"}, "undecodable envelope"),
        ({b"j": _GOOD[:-3]}, "undecodable envelope"),
        ({b"j": b'{"ts": 1, "p": 1}'}, "undecodable envelope"),  # no id
        ({b"j": b'{"id": "a", "ts": 1}'}, "undecodable envelope"),  # no payload
        ({b"j": b'{"id": "a", "ts": "x", "p": 1}'}, "undecodable envelope"),
        ({b"j": b'{"id": "a", "ts": 1, "p": 1, "h": {"k": 1}}'}, "undecodable envelope"),
        ({b"j": b"[1, 2]"}, "undecodable envelope"),
        ({b"m": b"\xc1\xc1"}, "undecodable envelope"),
        ({b"j": _GOOD, b"a": b"two"}, "attempts or expiry"),
        ({b"j": _GOOD, b"x": b"\xff"}, "attempts or expiry"),
        ({b"j": _GOOD, b"g": b"\xff\xfe"}, "target group"),
    ],
)
def test_garbled_entries_raise_decode_error(fields: dict[bytes, bytes] | None, reason: str) -> None:
    with pytest.raises(MessageDecodeError, match=reason):
        decode_entry(fields, DEFAULT_MAX_MESSAGE_SIZE)


def test_oversized_entry_is_not_decoded() -> None:
    _, body = Codec("json").encode("x" * 500)
    with pytest.raises(MessageDecodeError, match="max_message_size=100"):
        decode_entry({b"j": body}, 100)


def test_unknown_envelope_fields_are_tolerated() -> None:
    body = b'{"id": "a", "ts": 1, "p": {"v": 1}, "future": [1, 2], "v": 2}'
    entry = decode_entry({b"j": body, b"other": b"field"}, DEFAULT_MAX_MESSAGE_SIZE)
    assert entry.message_id == "a"
    assert decode_payload(entry) == {"v": 1}


def test_undecodable_payload_inside_a_valid_envelope() -> None:
    entry = decode_entry({b"j": b'{"id": "a", "ts": 1, "p": 1}'}, DEFAULT_MAX_MESSAGE_SIZE)
    with pytest.raises(MessageDecodeError):
        decode_payload(entry, dict[str, int])


def test_either_codec_is_read_whatever_the_queue_serializer() -> None:
    _, packed = Codec("msgpack").encode({"m": 1})
    entry = decode_entry({b"m": packed}, DEFAULT_MAX_MESSAGE_SIZE)
    assert entry.is_msgpack
    assert decode_payload(entry) == {"m": 1}


# -- the format in Redis -------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_entry_fields_in_redis(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue, _ = await mq.create_queue_pair("wire")
    plain = await queue.send_message({"n": 1}, message_id="mine", headers={"k": "v"})
    with_ttl = await queue.send_message({"n": 2}, ttl=30)
    entries = dict(await raw.xrange(queue.stream))
    assert set(entries[plain.encode()]) == {b"j"}
    env = msgspec.json.decode(entries[plain.encode()][b"j"])
    assert env["id"] == "mine"
    assert env["h"] == {"k": "v"}
    assert env["p"] == {"n": 1}
    assert set(entries[with_ttl.encode()]) == {b"j", b"x"}
    expiry_score = await raw.zscore(queue.keys.expiry, with_ttl)
    assert expiry_score == int(entries[with_ttl.encode()][b"x"])


@pytest.mark.anyio
async def test_msgpack_serializer_writes_field_m(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix, serializer="msgpack") as mq:
        queue, _ = await mq.create_queue_pair("packed")
        sid = await queue.send_message({"blob": b"\x00\xff", "n": 1})
        ((_, fields),) = await raw.xrange(queue.stream)
        assert set(fields) == {b"m"}
        env = msgspec.msgpack.decode(fields[b"m"])
        assert env["p"] == {"blob": b"\x00\xff", "n": 1}
        (msg,) = await queue.get_messages()
        assert msg.id == sid
        assert msg.data == {"blob": b"\x00\xff", "n": 1}
    # A JSON client reads msgpack entries too (a queue can switch serializer).
    async with LeanMQ(redis_server.url, prefix=prefix) as mq_json:
        queue = mq_json.queue("packed")
        await queue.send_message({"n": 2})
        (peeked_packed, peeked_json) = await queue.peek_messages()
        assert peeked_packed.data == {"blob": b"\x00\xff", "n": 1}
        assert peeked_json.data == {"n": 2}
