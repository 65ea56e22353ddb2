"""The worker's normal life: handling, handler kinds, registration, fan-out, delays, TTLs,
retention trimming and consumer housekeeping."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from leanmq_async import ConfigurationError, ConnectionSettings, LeanMQ, Message
from leanmq_async.testing import free_port
from tests.worker_apps.common import (
    entries,
    group_info,
    pending_count,
    read_as,
    settled,
    wait_until,
)

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


class Order(msgspec.Struct):
    order_id: int
    sku: str


def no_wait(_retry: int) -> float:
    return 0.01


# -- handling -----------------------------------------------------------------------------


async def test_each_message_is_handled_once_and_acked(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("orders")
    seen: list[int] = []

    @queue.handler(concurrency=7)
    async def handle(data: dict[str, int]) -> None:
        seen.append(data["n"])

    # Sent before any worker (or group) existed: the group reads from the start.
    await queue.send_messages([{"n": i} for i in range(25)])
    async with mq.worker(**FAST) as worker:
        await queue.send_messages([{"n": i} for i in range(25, 50)])
        await wait_until(lambda: len(seen) >= 50, what="50 messages handled")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    assert sorted(seen) == list(range(50))
    info = await group_info(raw, queue.stream, queue.consumer_group)
    assert info["pending"] == 0
    assert info["lag"] == 0
    assert info["entries-read"] == 50
    stats = worker.stats
    assert (stats.received, stats.handled, stats.failed, stats.dead_lettered) == (50, 50, 0, 0)
    assert await raw.xlen(queue.dead_letter_queue().stream) == 0


async def test_handler_kinds(mq: LeanMQ, raw: aioredis.Redis) -> None:
    plain_q, struct_q, message_q, typed_q = (mq.queue(n) for n in ("plain", "st", "msg", "typed"))
    got: dict[str, Any] = {}

    @plain_q.handler
    async def plain(data: dict[str, Any]) -> None:
        got["plain"] = data

    @struct_q.handler
    async def typed_payload(order: Order) -> None:
        got["struct"] = order

    @message_q.handler
    async def whole(message: Message) -> None:  # type: ignore[type-arg]  # the bare form
        got["message"] = message

    @typed_q.handler
    async def typed_message(message: Message[Order]) -> None:
        got["typed"] = message

    await plain_q.send_message({"a": [1, 2]})
    await struct_q.send_message({"order_id": 7, "sku": "x"})
    sid = await message_q.send_message({"k": "v"}, message_id="mid-1", headers={"trace": "t-1"})
    typed_sid = await typed_q.send_message(Order(order_id=9, sku="y"))
    async with mq.worker(**FAST):
        await wait_until(lambda: len(got) == 4, what="four handlers called")

    assert got["plain"] == {"a": [1, 2]}
    assert got["struct"] == Order(order_id=7, sku="x")
    message = got["message"]
    assert isinstance(message, Message)
    assert message.id == sid
    assert message.data == {"k": "v"}
    assert message.message_id == "mid-1"
    assert message.headers == {"trace": "t-1"}
    assert (message.attempt, message.delivery_count) == (1, 1)
    assert message.queue == "msg"
    typed = got["typed"]
    assert isinstance(typed, Message)
    assert typed.id == typed_sid
    assert typed.data == Order(order_id=9, sku="y")
    assert isinstance(typed.data, Order)
    for q in (plain_q, struct_q, message_q, typed_q):
        await wait_until(partial(settled, raw, q.stream, q.consumer_group), what="acks")


async def test_concurrency_limits_and_worker_queue_selection(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    busy, other = mq.queue("busy"), mq.queue("other")
    running = 0
    peak = 0
    other_calls: list[int] = []

    @busy.handler(concurrency=50)
    async def handle(data: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.05)
        running -= 1

    @other.handler
    async def handle_other(data: int) -> None:
        other_calls.append(data)

    await busy.send_messages(list(range(12)))
    await other.send_messages([1, 2])
    # The worker-wide concurrency overrides the handler's; only the queues given are served.
    async with mq.worker(**FAST, concurrency=3, queues=[busy]) as worker:
        assert [r.queue.name for r in worker.runners] == ["busy"]
        await wait_until(lambda: worker.stats.handled == 12, what="twelve handled")
    assert peak == 3
    assert other_calls == []
    assert await raw.xinfo_groups(other.stream) == []  # not even its group was created
    assert await raw.xlen(other.stream) == 2


# -- registration -------------------------------------------------------------------------


def offline_client() -> LeanMQ:
    """A client whose server does not exist: any I/O would fail with a connection error."""
    return LeanMQ(
        f"redis://127.0.0.1:{free_port()}/0",
        prefix="offline:",
        connection=ConnectionSettings(socket_connect_timeout=0.2),
    )


async def _two(a: object, b: object) -> None: ...


async def _none() -> None: ...


async def _agen(data: object) -> Any:
    yield data


def _sync(data: object) -> None: ...


async def _ok(data: object) -> None: ...


@pytest.mark.parametrize(
    ("func", "options", "match"),
    [
        (_sync, {}, "async def"),
        (_agen, {}, "async def"),
        (_none, {}, "exactly one required argument"),
        (_two, {}, "exactly one required argument"),
        (_ok, {"concurrncy": 3}, "unknown handler option"),
        (_ok, {"concurrency": 0}, "concurrency"),
        (_ok, {"concurrency": 2.5}, "concurrency"),
        (_ok, {"max_retries": -1}, "max_retries"),
        (_ok, {"max_retries": True}, "max_retries"),
        (_ok, {"timeout": 0}, "timeout"),
        (_ok, {"visibility_timeout": 0.001}, "visibility_timeout"),
        (_ok, {"max_deliveries": 0}, "max_deliveries"),
        (_ok, {"expired": "keep"}, "expired"),
        (_ok, {"backoff": 5}, "backoff"),
        (_ok, {"group": ""}, "group"),
    ],
)
async def test_bad_handler_is_refused_at_decoration(
    func: Any, options: dict[str, Any], match: str
) -> None:
    async with offline_client() as mq:
        queue = mq.queue("orders")
        with pytest.raises(ConfigurationError, match=match):
            queue.handler(**options)(func)
        assert mq.handlers == []
        # A good handler registers on the same (unreachable) client: no I/O was needed.
        assert queue.handler(_ok) is _ok
        assert [h.func for h in mq.handlers] == [_ok]


async def test_two_handlers_for_one_queue_and_group_are_refused() -> None:
    async with offline_client() as mq:
        queue = mq.queue("orders")

        @queue.handler
        async def first(data: object) -> None: ...

        with pytest.raises(ConfigurationError, match="already has a handler"):

            @queue.handler
            async def second(data: object) -> None: ...

        with pytest.raises(ConfigurationError, match="already has a handler"):

            @queue.handler(group="orders-group")
            async def third(data: object) -> None: ...

        @queue.handler(group="audit")
        async def audit(data: object) -> None: ...

        assert [(h.name.rsplit(".", 1)[-1], h.group) for h in mq.handlers] == [
            ("first", "orders-group"),
            ("audit", "audit"),
        ]


async def test_worker_without_handlers_is_refused(mq: LeanMQ) -> None:
    with pytest.raises(ConfigurationError, match="no handlers"):
        mq.worker()
    mq.queue("orders").handler(_ok)
    with pytest.raises(ConfigurationError, match="unknown worker setting"):
        mq.worker(blok_ms=10)


# -- fan-out --------------------------------------------------------------------------------


async def test_fan_out_groups_each_get_every_message_and_retries_stay_in_their_group(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("events")
    calls_a: list[tuple[int, int]] = []
    calls_b: list[int] = []

    @queue.handler(group="a", backoff=no_wait, max_retries=2)
    async def handle_a(message: Message[dict[str, int]]) -> None:
        calls_a.append((message.data["n"], message.attempt))
        if message.data["n"] == 3 and message.attempt == 1:
            raise ValueError("fail once in group a")

    @queue.handler(group="b")
    async def handle_b(data: dict[str, int]) -> None:
        calls_b.append(data["n"])

    async with mq.worker(**FAST) as worker:
        await queue.send_messages([{"n": i} for i in range(5)])
        await wait_until(lambda: (3, 2) in calls_a, what="the retry in group a")
        await wait_until(lambda: settled(raw, queue.stream, "a"), what="group a settled")
        # The retry copy is in the stream for everyone to see; group b must read past it.
        await wait_until(lambda: settled(raw, queue.stream, "b"), what="group b settled")
        assert worker.stats.retried == 1

    assert sorted(calls_b) == [0, 1, 2, 3, 4]
    assert sorted(calls_a) == [(0, 1), (1, 1), (2, 1), (3, 1), (3, 2), (4, 1)]
    stream = await entries(raw, queue.stream)
    copies = [f for _, f in stream if b"g" in f]
    assert len(stream) == 6
    assert len(copies) == 1
    assert copies[0][b"g"] == b"a"
    assert copies[0][b"a"] == b"1"


async def test_a_worker_creates_only_the_groups_its_handlers_read(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("billing-only")
    handled: list[int] = []

    @queue.handler(group="billing")
    async def handle(data: int) -> None:
        handled.append(data)

    await queue.send_messages(range(5))
    await mq.run_worker(burst=True, **FAST)
    assert sorted(handled) == list(range(5))
    groups = [g["name"].decode() for g in await raw.xinfo_groups(queue.stream)]
    assert groups == ["billing"]  # no default group that nobody reads
    dlq_groups = [g["name"].decode() for g in await raw.xinfo_groups(queue.keys.dlq)]
    assert dlq_groups == [queue.dead_letter_queue().consumer_group]
    # Every group acknowledged the history, so a trim with retention 0 removes it all.
    assert await mq.store.trim(queue.stream, 0) == 5
    assert await raw.xlen(queue.stream) == 0


# -- delays and TTLs ----------------------------------------------------------------------------


async def test_delayed_message_is_handled_after_its_delay_not_before(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("later")
    handled: list[str] = []

    @queue.handler
    async def handle(data: str) -> None:
        handled.append(data)

    async with mq.worker(**FAST):
        await queue.send_message("now")
        await queue.send_message("later", delay=1.5)
        await wait_until(lambda: "now" in handled, what="the undelayed message")
        await anyio.sleep(0.3)
        assert handled == ["now"]
        assert await raw.zcard(queue.keys.delayed) == 1
        await wait_until(lambda: "later" in handled, within=10, what="the delayed message")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    assert handled == ["now", "later"]
    assert await raw.zcard(queue.keys.delayed) == 0
    assert await raw.hlen(queue.keys.delayed_data) == 0


@pytest.mark.parametrize("policy", ["drop", "dlq"])
async def test_expired_messages_never_reach_the_handler(
    mq: LeanMQ, raw: aioredis.Redis, policy: str
) -> None:
    queue = mq.queue("fresh")
    handled: list[int] = []

    @queue.handler(expired=policy)
    async def handle(data: int) -> None:
        handled.append(data)

    await queue.send_messages([1, 2, 3], ttl=0.2)
    await anyio.sleep(0.5)
    async with mq.worker(**FAST, expire_interval=60) as worker:
        await wait_until(lambda: worker.stats.expired == 3, what="three expired")
        await queue.send_message(4, ttl=60)
        await wait_until(lambda: handled == [4], what="the live message")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    assert handled == [4]
    dead = await entries(raw, queue.dead_letter_queue().stream)
    if policy == "drop":
        assert dead == []
        assert worker.stats.dead_lettered == 0
    else:
        assert len(dead) == 3
        for _, fields in dead:
            assert b"expired" in fields[b"dlq.reason"]
            assert fields[b"dlq.queue"] == b"fresh"
        assert worker.stats.dead_lettered == 3


@pytest.mark.parametrize("policy", ["drop", "dlq"])
async def test_maintenance_expires_unread_messages(
    mq: LeanMQ, raw: aioredis.Redis, policy: str
) -> None:
    queue, dlq = await mq.create_queue_pair("stale")
    handled: list[int] = []

    @queue.handler(expired=policy)
    async def handle(data: int) -> None:
        handled.append(data)

    await queue.send_messages([1, 2], ttl=0.1)
    await queue.send_message(3, ttl=60)
    await anyio.sleep(0.3)
    worker = mq.worker(**FAST)  # not started: only its upkeep step runs
    assert await worker.maintenance.expire_once() == 2
    assert await raw.xlen(queue.stream) == 1
    assert await raw.zcard(queue.keys.expiry) == 1
    assert await raw.xlen(dlq.stream) == (2 if policy == "dlq" else 0)
    assert handled == []


# -- retention and housekeeping ----------------------------------------------------------


async def test_trim_never_removes_unacked_entries(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("history")
    release = anyio.Event()
    handled: list[str] = []

    @queue.handler(concurrency=2)
    async def handle(data: str) -> None:
        if data.startswith("hold"):
            await release.wait()
        handled.append(data)

    async with mq.worker(**FAST, retention=0, trim_interval=3600) as worker:
        await queue.send_messages([f"quick{i}" for i in range(5)])
        await wait_until(lambda: len(handled) == 5, what="quick ones handled")
        await wait_until(
            lambda: settled(raw, queue.stream, queue.consumer_group), what="quick ones acked"
        )
        held = await queue.send_messages(["hold1", "hold2"])
        await wait_until(
            lambda: _pending_is(raw, queue.stream, queue.consumer_group, 2), what="two held"
        )
        unread = await queue.send_messages([f"late{i}" for i in range(3)])
        assert await raw.xlen(queue.stream) == 10

        assert await worker.maintenance.trim_once() == 5
        assert await raw.xlen(queue.stream) == 5
        remaining = [sid.decode() for sid, _ in await entries(raw, queue.stream)]
        assert remaining == held + unread
        # Nothing more can go: the rest is pending or unread.
        assert await worker.maintenance.trim_once() == 0
        release.set()
        await wait_until(lambda: len(handled) == 10, what="all handled")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    assert sorted(handled[5:]) == ["hold1", "hold2", "late0", "late1", "late2"]


async def _pending_is(raw: aioredis.Redis, stream: str, group: str, n: int) -> bool:
    return await pending_count(raw, stream, group) == n


async def test_trim_keeps_what_a_lagging_group_has_not_read(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = await mq.create_queue_pair("lagging")
    queue.handler(_ok)
    ids = await queue.send_messages(list(range(6)))
    await raw.xgroup_create(queue.stream, "slow-reader", id="0")
    # The main group reads and acks everything; slow-reader has read only two.
    got = await read_as(raw, queue.consumer_group, "c", queue.stream, 10)
    await raw.xack(queue.stream, queue.consumer_group, *[sid for sid, _ in got])
    got = await read_as(raw, "slow-reader", "c", queue.stream, 2)
    await raw.xack(queue.stream, "slow-reader", *[sid for sid, _ in got])

    worker = mq.worker(retention=0)
    assert await worker.maintenance.trim_once() == 2
    assert [s.decode() for s, _ in await entries(raw, queue.stream)] == ids[2:]
    # With a long retention, acknowledged entries younger than it stay too.
    assert await mq.worker(retention=3600).maintenance.trim_once() == 0
    assert await raw.xlen(queue.stream) == 4


async def test_housekeeping_removes_dead_consumers_holding_nothing(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = await mq.create_queue_pair("house")
    # visibility_timeout=0.1: consumers idle for 10 leases (1 s) and dead_consumer_idle
    # may be removed.
    queue.handler(visibility_timeout=0.1)(_ok)
    group = queue.consumer_group
    await queue.send_messages(["a", "b"])
    ((sid, _),) = await read_as(raw, group, "dead-empty", queue.stream, 1)
    await raw.xack(queue.stream, group, sid)
    assert len(await read_as(raw, group, "dead-holding", queue.stream, 1)) == 1
    await raw.xgroup_createconsumer(queue.stream, group, "dead-never")

    worker = mq.worker(dead_consumer_idle=0.2)

    async def names() -> set[str]:
        return {c["name"].decode() for c in await raw.xinfo_consumers(queue.stream, group)}

    await worker.maintenance.housekeeping_once()
    assert await names() == {"dead-empty", "dead-holding", "dead-never"}  # not idle enough

    async def swept() -> bool:
        await worker.maintenance.housekeeping_once()
        return await names() == {"dead-holding"}

    await wait_until(swept, within=10, interval=0.2, what="idle consumers removed")
    (holder,) = await raw.xinfo_consumers(queue.stream, group)
    assert holder["pending"] == 1
    assert await pending_count(raw, queue.stream, group) == 1


async def test_a_read_waiting_for_slots_is_not_ended_by_a_reclaim_taking_them(mq: LeanMQ) -> None:
    """Found by reliability case 16 under load: the fetch loop lingered for a batch of free
    slots, the reclaim loop took them meanwhile, and the fetch loop got 0 (which means
    "stopping") and ended for good: the worker read nothing more and logged nothing."""
    queue = mq.queue("slots")

    @queue.handler(concurrency=8)
    async def handle(data: Any) -> None:
        pass

    slots = mq.worker().runners[0].state.slots
    slots.free = 1  # one free slot: the fetch loop lingers for a batch of 2
    got: list[int] = []
    async with anyio.create_task_group() as tg:

        async def fetch() -> None:
            got.append(await slots.reserve(batch=2))

        tg.start_soon(fetch)
        await anyio.lowlevel.checkpoint()  # the fetch loop is lingering now
        assert await slots.reserve(reclaiming=True) == 1  # the reclaim loop takes it
        await anyio.sleep(0.05)  # past the linger
        assert got == []  # still waiting: 0 would mean "stop"
        slots.release(3)
    assert got == [3]
