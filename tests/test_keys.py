"""Key layout: names, validation, one cluster slot per queue, unique consumer names."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from leanmq_async import ConfigurationError, LeanMQ
from leanmq_async.keys import (
    DLQ_SUFFIX,
    QueueKeys,
    default_group,
    legacy_registry_key,
    make_consumer_name,
    registry_key,
    validate_prefix,
    validate_queue_name,
)
from leanmq_async.testing import RedisServer

LEVEL_KEYS = ("", ":delayed", ":delayed:data", ":expiry")


def test_key_names() -> None:
    keys = QueueKeys("mq:", "orders")
    assert keys.tag == "mq:{orders}"
    assert keys.stream == "mq:{orders}"
    assert keys.dlq == "mq:{orders}" + DLQ_SUFFIX == "mq:{orders}:dlq"
    assert keys.delayed == "mq:{orders}:delayed"
    assert keys.delayed_data == "mq:{orders}:delayed:data"
    assert keys.expiry == "mq:{orders}:expiry"
    assert keys.meta == "mq:{orders}:meta"
    assert keys.dedup == "mq:{orders}:dedup"
    assert keys.dedup_until == "mq:{orders}:dedup:until"
    assert keys.cron == "mq:{orders}:cron"
    assert keys.cancelled == "mq:{orders}:cancelled"
    assert keys.all() == (
        keys.stream,
        keys.dlq,
        keys.delayed,
        keys.delayed_data,
        keys.expiry,
        keys.meta,
        keys.dedup,
        keys.dedup_until,
        keys.cron,
        keys.cancelled,
        *(f"mq:{{orders}}:p{level}{k}" for level in (2, 0) for k in LEVEL_KEYS),
    )
    high = keys.at(2)
    assert (high.stream, high.delayed, high.expiry) == (
        "mq:{orders}:p2",
        "mq:{orders}:p2:delayed",
        "mq:{orders}:p2:expiry",
    )
    assert (high.dlq, high.meta, high.dedup) == (keys.dlq, keys.meta, keys.dedup)
    assert keys.at(1) is keys
    assert {key_slot(k.encode()) for k in keys.all()} == {key_slot(b"mq:{orders}")}
    assert registry_key("mq:") == "mq:{}:registry"
    assert legacy_registry_key("mq:") == "mq:registry"  # LeanMQ 0.2's own key: read only
    assert default_group("orders") == "orders-group"


@pytest.mark.parametrize("name", ["orders", "a", "x.y-z_1", "team/orders#v2@eu", "a:b", "Q" * 200])
def test_every_key_of_a_queue_hashes_to_one_slot(name: str) -> None:
    keys = QueueKeys("mq:", name)
    slots = {key_slot(k.encode()) for k in keys.all()}
    assert slots == {key_slot(name.encode())}


def test_different_queues_usually_land_in_different_slots() -> None:
    slots = {key_slot(QueueKeys("mq:", f"q{i}").stream.encode()) for i in range(50)}
    assert len(slots) > 40


@pytest.mark.parametrize(
    "name",
    ["", "has space", "br{ace", "br}ace", "{orders}", "tab\t", "new\nline", "é", "Q" * 201],
)
def test_invalid_queue_names(name: str) -> None:
    with pytest.raises(ConfigurationError):
        validate_queue_name(name)


@pytest.mark.parametrize("name", [None, 3, b"orders"])
def test_queue_name_must_be_a_string(name: object) -> None:
    with pytest.raises(ConfigurationError):
        validate_queue_name(name)  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["{mq}:", "mq{", "mq}", "}"])
def test_prefix_with_braces_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="braces"):
        validate_prefix(prefix)
    with pytest.raises(ConfigurationError):
        LeanMQ("redis://127.0.0.1:1", prefix=prefix)


def test_prefix_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError):
        validate_prefix(None)  # type: ignore[arg-type]
    assert validate_prefix("") == ""
    assert validate_prefix("app:v1:") == "app:v1:"


def test_consumer_names_are_unique() -> None:
    names = {make_consumer_name() for _ in range(200)}
    assert len(names) == 200
    host, pid, token = make_consumer_name().rsplit(":", 2)
    assert host and pid.isdigit() and len(token) == 8


def test_each_client_gets_its_own_consumer_name() -> None:
    a = LeanMQ("redis://127.0.0.1:1")
    b = LeanMQ("redis://127.0.0.1:1")
    assert a.consumer_name != b.consumer_name
    c = LeanMQ("redis://127.0.0.1:1", consumer_name="me")
    assert c.consumer_name == "me"


@pytest.mark.anyio
async def test_every_key_written_for_a_queue_shares_its_slot(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix) as mq:
        queue, _ = await mq.create_queue_pair("orders")
        await queue.send_message({"a": 1}, ttl=60)
        await queue.send_message({"a": 2}, delay=60, message_id="a-2")  # dedup records
        (msg,) = await queue.get_messages()
        await queue.cancel(msg.id)  # a cancel marker
        await queue.move_to_dlq([msg.id], "test")
        for level in ("low", "high"):  # each priority level's stream, delayed and expiry keys
            await queue.send_message({"a": 3}, ttl=60, priority=level)
            await queue.send_message({"a": 4}, delay=60, priority=level)
        written = [k.decode() async for k in raw.scan_iter(match=f"{prefix}*")]
    queue_keys = [k for k in written if k != registry_key(prefix)]
    keys = QueueKeys(prefix, "orders")
    assert set(queue_keys) == set(keys.all()) - {keys.cron}  # cron: only a job's queue has it
    assert {key_slot(k.encode()) for k in queue_keys} == {key_slot(b"orders")}
    assert registry_key(prefix) in written
