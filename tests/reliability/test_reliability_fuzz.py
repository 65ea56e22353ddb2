"""Hypothesis-driven fuzzing of the envelope decoder and of the entries a running worker
reads: nothing but MessageDecodeError ever escapes the decoder, the worker never crashes,
and a handler is only ever called with what a valid entry holds. Case 22."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leanmq_async import LeanMQ, Message, MessageDecodeError
from leanmq_async.envelope import DecodedEntry, decode_entry, decode_payload
from leanmq_async.testing import RedisServer
from tests.reliability.harness import note, wait_until


class Order(msgspec.Struct):
    mid: str
    qty: int


# -- strategies --------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """An envelope, right or subtly wrong, as JSON or msgpack bytes (maybe truncated)."""
    env: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        env["id"] = draw(st.text(max_size=12) | json_values)
    if draw(st.integers(0, 9)):
        env["ts"] = draw(st.floats(allow_nan=False, allow_infinity=False) | json_values)
    if draw(st.integers(0, 9)):
        env["p"] = draw(
            json_values
            | st.fixed_dictionaries({"mid": st.text(max_size=8), "qty": st.integers(-5, 5)})
        )
    if draw(st.booleans()):
        env["h"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5) | json_values))
    if draw(st.booleans()):
        env[draw(st.text(max_size=6))] = draw(json_values)  # unknown keys
    body = json.dumps(env).encode()
    if draw(st.booleans()):
        with contextlib.suppress(OverflowError):  # msgpack has no integers past 64 bits
            body = msgspec.msgpack.encode(env)
    if draw(st.integers(0, 5)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    return body


def nested(depth: int, packed: bool) -> bytes:
    """An envelope whose payload is ``depth`` lists deep (past msgspec's recursion limit)."""
    if packed:
        return (
            msgspec.msgpack.encode({"id": "x", "ts": 1.0, "p": 0})[:-1] + b"\x91" * depth + b"\x90"
        )
    return b'{"id":"x","ts":1,"p":' + b"[" * depth + b"]" * depth + b"}"


deep = st.builds(nested, st.integers(1, 3000), st.booleans())
numbers = st.integers(min_value=-(10**20), max_value=10**20).map(lambda i: str(i).encode())
values = (
    st.binary(max_size=64) | envelopes() | deep | numbers | st.sampled_from([b"", b" 7 ", b"1_0"])
)
names = st.sampled_from([b"j", b"m", b"x", b"a", b"g", b"p", b"dlq.reason", b""]) | st.binary(
    max_size=4
)


SPECIAL = {b"j", b"m", b"x", b"a", b"g"}
text = st.text(max_size=12)


@st.composite
def good_envelope(draw: st.DrawFn, key: bytes) -> bytes:
    """A valid envelope for field ``key`` (JSON for j, msgpack for m), unknown keys and all."""
    env: dict[str, Any] = {
        "id": draw(text),
        "ts": draw(st.floats(allow_nan=False, allow_infinity=False)),
        "p": draw(json_values),
    }
    if draw(st.booleans()):
        env["h"] = draw(st.dictionaries(text, text, max_size=3))
    if draw(st.booleans()):
        env[draw(text.filter(lambda k: k not in ("id", "ts", "p", "h")))] = draw(json_values)
    if key == b"m":
        try:
            return msgspec.msgpack.encode(env)
        except OverflowError:  # msgpack has no integers past 64 bits
            return msgspec.msgpack.encode({"id": env["id"], "ts": env["ts"], "p": None})
    return json.dumps(env).encode()


@st.composite
def entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    """A stream entry's fields: anything at all, a garbled envelope, or a valid one with
    unknown fields and sometimes bad or meaningful attempts, target group and expiry."""
    mode = draw(st.integers(0, 3))
    if mode == 0:
        return draw(st.dictionaries(names, values, min_size=1, max_size=5))
    key = draw(st.sampled_from([b"j", b"m"]))
    if mode == 1:
        body = draw(envelopes() | st.builds(nested, st.integers(1, 3000), st.just(key == b"m")))
    else:
        body = draw(good_envelope(key))
    fields = {key: body}
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.binary(max_size=4).filter(lambda b: b not in SPECIAL))
        fields[name] = draw(st.binary(max_size=16))
    if draw(st.integers(0, 4)) == 0:
        fields[b"a"] = draw(numbers | st.binary(max_size=4))
    if draw(st.integers(0, 4)) == 0:
        fields[b"g"] = draw(st.sampled_from([b"fuzz-group", b"other-group", b"\xff"]))
    if draw(st.integers(0, 4)) == 0:
        far = int(time.time() * 1000) + draw(st.sampled_from([-3_600_000, 3_600_000]))
        fields[b"x"] = str(far).encode()
    return fields


# -- the decoder alone -------------------------------------------------------------------


@settings(max_examples=400, deadline=None, database=None)
@given(
    fields=st.none() | st.dictionaries(names, values, max_size=5) | entries(),
    max_size=st.sampled_from([1, 16, 256, 1024 * 1024]),
)
def test_case22_decoder_raises_only_message_decode_error(
    fields: dict[bytes, bytes] | None, max_size: int
) -> None:
    try:
        entry = decode_entry(fields, max_size)
    except MessageDecodeError:
        return
    assert isinstance(entry, DecodedEntry)
    assert isinstance(entry.message_id, str)
    assert isinstance(entry.timestamp, float)
    assert isinstance(entry.attempts, int)
    assert entry.expires_at_ms is None or isinstance(entry.expires_at_ms, int)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in entry.headers.items())
    for payload_type in (Any, dict[str, Any], Order, list[int]):
        try:
            payload = decode_payload(entry, payload_type)
        except MessageDecodeError:
            continue
        if payload_type is Order:
            assert isinstance(payload, Order) and isinstance(payload.qty, int)


# -- a running worker --------------------------------------------------------------------


class Fed:
    """What was fed to the worker and what its handler saw, entry by entry."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Any]] = {}
        self.expected: dict[str, tuple[str, Any]] = {}  # sid -> (outcome, payload)


def expected_outcome(fields: dict[bytes, bytes], group: str, now_ms: float) -> tuple[str, Any]:
    """What the worker must do with ``fields``: the decoder is the oracle."""
    try:
        entry = decode_entry(fields, 1024 * 1024)
    except MessageDecodeError:
        return "dlq", None
    if entry.target_group is not None and entry.target_group != group:
        return "skip", None
    if entry.expires_at_ms is not None and entry.expires_at_ms <= now_ms:
        return "expired", None
    try:
        return "handle", decode_payload(entry)
    except MessageDecodeError:
        return "dlq", None


def same(a: Any, b: Any) -> bool:
    """Equal payloads (NaN included); for lists nested too deep to compare, equal types."""
    try:
        return bool(repr(a) == repr(b))
    except RecursionError:
        return type(a) is type(b)


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as p:
        yield p


def test_case22_fuzzed_entries_fed_to_a_running_worker(
    redis_server: RedisServer, prefix: str, portal: BlockingPortal
) -> None:
    fed = Fed()
    group = "fuzz-group"
    mq = LeanMQ(redis_server.url, prefix=prefix)
    queue = mq.queue("fuzz")
    raw = aioredis.Redis.from_url(redis_server.url)

    @queue.handler(group=group, concurrency=20, max_retries=0)
    async def handle(message: Message[Any]) -> None:
        fed.calls.setdefault(message.id, []).append(message.data)

    worker = mq.worker(block_ms=100, maintenance_interval=0.05, expire_interval=3600)
    future, _ = portal.start_task(worker.serve)
    examples = 0

    async def feed(batch: list[dict[bytes, bytes]]) -> None:
        sec, usec = await raw.time()
        now = sec * 1000 + usec / 1000
        for fields in batch:
            sid = (await raw.xadd(queue.stream, fields)).decode()  # type: ignore[arg-type]
            fed.expected[sid] = expected_outcome(fields, group, now)

        async def done() -> bool:
            (info,) = [
                g for g in await raw.xinfo_groups(queue.stream) if g["name"] == b"fuzz-group"
            ]
            return int(info["pending"]) == 0 and info["lag"] == 0

        await wait_until(done, within=20, interval=0.005, what="the batch settled")

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(entries(), min_size=1, max_size=8))
    def run(batch: list[dict[bytes, bytes]]) -> None:
        nonlocal examples
        examples += 1
        portal.call(feed, batch)
        assert not future.done(), "the worker stopped"

    try:
        run()
        dead = portal.call(_dlq, raw, queue.keys.dlq)
        stats = worker.stats
    finally:
        worker.stop()
        future.result(timeout=30)
        portal.call(raw.aclose)
        portal.call(mq.aclose)

    outcomes = Counter(kind for kind, _ in fed.expected.values())
    line = (
        f"reliability case 22: confirmed={len(fed.expected)} handled={len(fed.calls)} lost=0 "
        f"duplicated={sum(1 for c in fed.calls.values() if len(c) > 1)} examples={examples} "
        + " ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
        + f" worker_dead_lettered={stats.dead_lettered} worker_expired={stats.expired}"
    )
    note(line)
    for sid, (kind, payload) in fed.expected.items():
        calls = fed.calls.get(sid, [])
        if kind == "handle":
            assert len(calls) == 1, (sid, calls)
            assert same(calls[0], payload), (sid, calls[0], payload)
        else:
            assert not calls, (sid, kind, calls)  # never a handler call with garbage
        assert (sid in dead) == (kind == "dlq"), (sid, kind)
    assert set(fed.calls) <= set(fed.expected)
    assert stats.dead_lettered == outcomes["dlq"]
    assert stats.handled == outcomes["handle"]


async def _dlq(raw: aioredis.Redis, dlq: str) -> set[str]:
    reply: Any = await raw.xrange(dlq)
    return {fields[b"dlq.id"].decode() for _, fields in reply}
