"""Bad stream entries: garbled, deleted or trimmed while pending, oversized, and valid
JSON of the wrong types. Cases 11, 12, 13 and 14 of the reliability suite."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Message, MessageTooLargeError, Reject
from leanmq_async.testing import RedisServer
from tests.reliability.harness import (
    Ledger,
    Producer,
    assert_settled,
    capture_events,
    check,
    dlq_entries,
    ledger_client,
    report,
    settled,
    wait_until,
)

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"block_ms": 100, "maintenance_interval": 0.02, "grace_period": 5.0}


def envelope(mid: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"id-{mid}", "ts": 1.0, "p": {"mid": mid}, **extra}


class CreatesAFile:
    """Unpickling this creates ``path``: it must never happen."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


# -- case 11 -----------------------------------------------------------------------------


async def test_case11_garbled_entries(
    redis_server: RedisServer,
    prefix: str,
    raw: aioredis.Redis,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    trap = tmp_path / "pwned"
    evil = pickle.dumps(CreatesAFile(str(trap)))
    json_ok = msgspec.json.encode(envelope("x"))
    pack_ok = msgspec.msgpack.encode(envelope("x"))
    pack_zero = msgspec.msgpack.encode({"id": "x", "ts": 1.0, "p": 0})  # ends with p's 0 byte
    json_zero = msgspec.json.encode({"id": "x", "ts": 1.0, "p": 0})  # ends with 0}
    bad: dict[str, dict[bytes, bytes]] = {
        "random bytes (json)": {b"j": os.urandom(64)},
        "random bytes (msgpack)": {b"m": b"\xc1" + os.urandom(63)},
        "truncated json": {b"j": json_ok[:-7]},
        "truncated msgpack": {b"m": pack_ok[:-4]},
        "no envelope field": {b"payload": b'{"mid": "x"}'},
        "envelope without id": {b"j": msgspec.json.encode({"ts": 1.0, "p": {"mid": "x"}})},
        "envelope without payload": {b"j": msgspec.json.encode({"id": "x", "ts": 1.0})},
        "envelope not an object": {b"j": b"[1, 2, 3]"},
        "null envelope": {b"j": b"null"},
        "headers of the wrong type": {b"j": msgspec.json.encode(envelope("x", h={"k": 1}))},
        "attempts not a number": {b"j": json_ok, b"a": b"three"},
        "expiry not a number": {b"j": json_ok, b"x": b"soon"},
        "group not utf-8": {b"j": json_ok, b"g": b"\xff\xfe"},
        "payload of the wrong type": {b"j": msgspec.json.encode({"id": "x", "ts": 1, "p": 7})},
        "nested too deep (json)": {b"j": json_zero[:-2] + b"[" * 5000 + b"]" * 5000 + b"}"},
        "nested too deep (msgpack)": {b"m": pack_zero[:-1] + b"\x91" * 5000 + b"\x90"},
        "pickle as json": {b"j": evil},
        "pickle as msgpack": {b"m": evil},
        "pickle in another field": {b"pickle": evil},
    }
    mq, queue = ledger_client(redis_server.url, prefix, ledger, concurrency=5)
    producer = Producer(queue, "c11")
    await mq.create_queue_pair("work")
    bad_ids = {name: await producer.send_raw(raw, fields) for name, fields in bad.items()}
    # Unknown fields, in the entry and in the envelope, are tolerated: handled normally.
    tolerated: dict[str, str] = {}
    for name, make in {
        "unknown entry fields": lambda m: {
            b"j": msgspec.json.encode(envelope(m)),
            b"zzz": b"1",
            b"trace": b"\x00\xff",
        },
        "unknown envelope key (json)": lambda m: {
            b"j": msgspec.json.encode(envelope(m, extra={"a": [1]}, v=2))
        },
        "unknown envelope key (msgpack)": lambda m: {
            b"m": msgspec.msgpack.encode(envelope(m, extra=b"\x00"))
        },
    }.items():
        mid = tolerated[name] = producer.new_mid()
        producer.confirmed[mid] = await producer.send_raw(raw, make(mid))
    good = await producer.send(20)
    async with mq, mq.worker(**FAST) as worker:
        want = set(good) | set(tolerated.values())
        await wait_until(lambda: want <= set(ledger.counts()), what="good entries handled")
        await wait_until(lambda: worker.stats.dead_lettered == len(bad), what="bad entries")
        await wait_until(lambda: settled(raw, queue), what="acks")
    await assert_settled(raw, queue)
    dead = {f[b"dlq.id"].decode(): f for _, f in await dlq_entries(raw, queue)}
    rep = check(11, want, ledger)
    report(rep, garbled=len(bad), dead_lettered=len(dead), tolerated=len(tolerated))
    for name, sid in bad_ids.items():
        fields = dead[sid]
        assert fields[b"dlq.error"] == b"MessageDecodeError", name
        assert fields[b"dlq.reason"], name
        assert fields[b"dlq.attempts"] == b"0", name
        for key, value in bad[name].items():  # moved intact, undecoded
            assert fields[key] == value, name
    assert len(dead) == len(bad)
    assert {e["mid"] for e in ledger.events("start")} == want  # never called for the bad ones
    assert worker.stats.retried == 0 and worker.stats.reclaimed == 0  # first delivery
    assert not trap.exists()
    assert not rep.duplicated


# -- case 12 -----------------------------------------------------------------------------


async def test_case12_entries_deleted_or_trimmed_while_pending(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger
) -> None:
    gate = anyio.Event()
    held = {"c12-hold-ok", "c12-hold-fail", "c12-hold-reject"}

    async def behave(message: Message[dict[str, Any]]) -> None:
        assert message.data and "mid" in message.data  # never an empty payload
        mid = message.data["mid"]
        if mid in held:
            await gate.wait()
            if mid == "c12-hold-fail":
                raise RuntimeError("fails after its entry was deleted")
            if mid == "c12-hold-reject":
                raise Reject("rejected after its entry was deleted")

    mq, queue = ledger_client(
        redis_server.url, prefix, ledger, consumer="c12", behaviour=behave,
        concurrency=10, visibility_timeout=0.5, max_retries=3,
    )  # fmt: skip
    producer = Producer(queue, "c12")
    await mq.create_queue_pair("work")
    # A dead consumer holds 20 entries, and this worker's own name 6 (from a former life).
    ghost = await producer.send(20)
    await raw.xreadgroup(queue.consumer_group, "c12-ghost", {queue.stream: ">"}, count=20)
    mine = await producer.send(6)
    await raw.xreadgroup(queue.consumer_group, "c12", {queue.stream: ">"}, count=6)
    # Deleted while pending: 5 of the ghost's by XDEL, its first 5 by XTRIM, 3 of mine.
    xdel = [producer.confirmed[m] for m in ghost[10:15]] + [producer.confirmed[m] for m in mine[:3]]
    assert await raw.xdel(queue.stream, *xdel) == 8
    assert await raw.xtrim(queue.stream, minid=producer.confirmed[ghost[5]], approximate=False) == 5
    deleted = set(ghost[:5]) | set(ghost[10:15]) | set(mine[:3])
    more = await producer.send(10)
    with capture_events() as events:
        async with mq, mq.worker(**FAST) as worker:
            for mid in held:
                await producer.send_one(mid)
            await wait_until(lambda: held <= {e["mid"] for e in ledger.events("start")},
                             what="held in handlers")  # fmt: skip
            # Deleted while this worker's handlers hold them.
            assert await raw.xdel(queue.stream, *(producer.confirmed[m] for m in held)) == 3
            gate.set()
            alive = (set(ghost) | set(mine) | set(more)) - deleted
            await wait_until(lambda: (alive | {"c12-hold-ok"}) <= set(ledger.counts()),
                             within=30, what="the rest handled")  # fmt: skip
            await wait_until(lambda: settled(raw, queue), what="pending list cleaned")
            await wait_until(lambda: worker.stats.lost >= len(deleted), what="losses")
            await wait_until(lambda: events.count("retry_skipped") == 1, what="hold-fail")
            await wait_until(lambda: worker.stats.dead_lettered == 1, what="hold-reject")
    await assert_settled(raw, queue)
    missing_logged = sum(r.count for r in events.named("entries_missing"))  # type: ignore[attr-defined]
    rep = check(12, alive | {"c12-hold-ok"}, ledger)
    report(
        rep,
        deleted_while_pending=len(deleted) + len(held),
        dlq_tombstones=1,
        stats_lost=worker.stats.lost,
        entries_missing_logged=missing_logged,
        retry_skipped_logs=events.count("retry_skipped"),
    )
    assert missing_logged == len(deleted)  # the reclaim and the start-up recovery report them
    assert worker.stats.lost == len(deleted) + 1, worker.stats
    assert not deleted & {e["mid"] for e in ledger.events("start")}
    # hold-ok was handled (it was read before the delete); hold-fail could not be retried:
    # counted as lost, not hidden.
    assert "c12-hold-fail" not in ledger.counts()
    # hold-reject went to the DLQ as a tombstone: the loss is recorded there.
    ((_, tomb),) = await dlq_entries(raw, queue)
    assert tomb[b"dlq.missing"] == b"1"
    assert tomb[b"dlq.id"].decode() == producer.confirmed["c12-hold-reject"]
    assert not rep.duplicated


# -- case 13 -----------------------------------------------------------------------------


async def test_case13_oversized_payloads(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger
) -> None:
    limit = 2048
    mq = LeanMQ(redis_server.url, prefix=prefix, max_message_size=limit)
    queue = mq.queue("work")

    @queue.handler
    async def handle(message: Message[dict[str, Any]]) -> None:
        ledger.record(message.data["mid"], "done")

    await mq.create_queue_pair("work")
    producer = Producer(queue, "c13")
    big = {"mid": "c13-big", "blob": "x" * limit}
    refused = 0
    for attempt in (
        lambda: queue.send_message(big),
        lambda: queue.send_message(big, ttl=60),
        lambda: queue.send_message(big, delay=1),
        lambda: queue.send_messages([{"mid": "c13-small"}, big]),
        lambda: _in_transaction(mq, queue, big),
    ):
        with pytest.raises(MessageTooLargeError):
            await attempt()
        refused += 1
    assert await raw.xlen(queue.stream) == 0  # nothing written, not even the small one
    assert await raw.zcard(queue.keys.delayed) == 0
    # An oversized entry written by someone else is dead-lettered undecoded.
    foreign = msgspec.json.encode({"id": "f", "ts": 1.0, "p": {"mid": "c13-f", "b": "y" * 4000}})
    foreign_id = await producer.send_raw(raw, {b"j": foreign})
    good = await producer.send(10)
    async with mq, mq.worker(**FAST) as worker:
        await wait_until(lambda: set(good) <= set(ledger.counts()), what="the small ones")
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="the foreign one")
        await wait_until(lambda: settled(raw, queue), what="acks")
    await assert_settled(raw, queue)
    ((_, fields),) = await dlq_entries(raw, queue)
    rep = check(13, good, ledger)
    report(rep, refused_before_xadd=refused, foreign_dead_lettered=1)
    assert fields[b"dlq.id"].decode() == foreign_id
    assert fields[b"j"] == foreign  # copied as it was
    assert b"over max_message_size=2048; left undecoded" in fields[b"dlq.reason"]
    assert "c13-f" not in ledger.counts()


async def _in_transaction(mq: LeanMQ, queue: Any, data: Any) -> None:
    async with mq.transaction() as tx:
        tx.send_message(queue, {"mid": "c13-tx-small"})
        tx.send_message(queue, data)


# -- case 14 -----------------------------------------------------------------------------


class Line(msgspec.Struct):
    sku: str
    qty: int


class Order(msgspec.Struct):
    mid: str
    qty: int
    lines: list[Line] = []


async def test_case14_wrong_types_for_a_typed_handler(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger
) -> None:
    mq = LeanMQ(redis_server.url, prefix=prefix)
    queue = mq.queue("orders")
    seen: list[Order] = []

    @queue.handler
    async def handle(order: Order) -> None:
        assert isinstance(order, Order) and isinstance(order.qty, int)
        seen.append(order)
        ledger.record(order.mid, "done")

    bad = {
        "c14-str-for-int": ({"mid": "c14-str-for-int", "qty": "three"}, "$.qty"),
        "c14-nested": (
            {"mid": "c14-nested", "qty": 1, "lines": [{"sku": "a", "qty": 1}, {"sku": "b"}]},
            "$.lines[1]",
        ),
        "c14-nested-type": (
            {"mid": "c14-nested-type", "qty": 1, "lines": [{"sku": 5, "qty": 1}]},
            "$.lines[0].sku",
        ),
        "c14-missing": ({"mid": "c14-missing"}, "missing required field `qty`"),
        "c14-list": ([1, 2], "Expected `object`, got `array`"),
    }
    producer = Producer(queue, "c14")
    sids = {}
    for mid, (payload, _) in bad.items():
        sids[mid] = await queue.send_message(payload)
    good = []
    for _ in range(20):
        mid = producer.new_mid()
        producer.confirmed[mid] = await queue.send_message(
            {"mid": mid, "qty": 2, "lines": [{"sku": "s", "qty": 1}]}
        )
        good.append(mid)
    async with mq, mq.worker(**FAST) as worker:
        await wait_until(lambda: set(good) <= set(ledger.counts()), what="good orders")
        await wait_until(lambda: worker.stats.dead_lettered == len(bad), what="bad orders")
        await wait_until(lambda: settled(raw, queue), what="acks")
    await assert_settled(raw, queue)
    dead = {f[b"dlq.id"].decode(): f for _, f in await dlq_entries(raw, queue)}
    rep = check(14, good, ledger)
    report(rep, wrong_types=len(bad), dead_lettered=len(dead))
    for mid, (_, path) in bad.items():
        reason = dead[sids[mid]][b"dlq.reason"].decode()
        assert reason.startswith("payload validation failed"), reason
        assert path in reason, (mid, reason)
        assert dead[sids[mid]][b"dlq.attempts"] == b"0"
    assert len(seen) == len(good)
    assert worker.stats.retried == 0 and worker.stats.failed == 0  # first delivery, no retry
