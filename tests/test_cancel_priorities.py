"""Cancellation of priority levels' messages, on a real Redis (README "Cancellation").

A level's entry is named ``<stream id>:p<level>`` (leanmq_async/priority.py): cancel finds
its level by that name (or by a delayed member or a message_id in every level's keys),
and the cancel marker, the announcement, the worker's check and the dead letter all use
that name, so equal stream ids of two levels are never confused.
"""

from __future__ import annotations

from typing import Any, cast

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from leanmq_async import CancelOutcome, LeanMQ, Message
from leanmq_async.ops import admin_app
from leanmq_async.priority import split_id
from tests.cluster_fixtures import scmq, small_cluster
from tests.test_cancel import Recorder
from tests.worker_apps.common import wait_until

__all__ = ["scmq", "small_cluster"]  # fixtures, imported for pytest

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05}


async def _dead(mq: LeanMQ, name: str) -> list[tuple[Any, str, str, str]]:
    """(data, reason, group, the dead letter's source id) of every DLQ entry."""
    dlq = mq.queue(name).dead_letter_queue()
    return sorted(
        (
            (m.data, m.dead_letter.reason, m.dead_letter.group, m.dead_letter.source_id)
            for m in await dlq.peek_messages(count=100)
            if m.dead_letter is not None
        ),
        key=str,
    )


async def _read(raw: aioredis.Redis, stream: str, group: str, consumer: str) -> list[bytes]:
    """XREADGROUP every new entry of ``stream`` for ``consumer`` (pending now); their ids."""
    reply = await raw.xreadgroup(group, consumer, {stream: ">"}, count=100)
    rows = cast(list[tuple[bytes, list[tuple[bytes, Any]]]], reply)
    return [sid for _, entries in rows for sid, _ in entries]


async def _entries(raw: aioredis.Redis, stream: str) -> list[tuple[bytes, dict[Any, Any]]]:
    """XRANGE of the whole of ``stream``: (stream id, fields) of each entry."""
    return cast(list[tuple[bytes, dict[Any, Any]]], await raw.xrange(stream))


# -- the queue API -------------------------------------------------------------------------


async def test_a_delayed_high_message_is_cancelled_by_what_its_send_returned(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """A delayed send returns its schedule handle (no level in it): cancel finds it in the
    level's delayed set; the dead letter's id names the level (a requeue goes back there)."""
    q, _ = await mq.create_queue_pair("c")
    member = await q.send_message({"k": 1}, delay=5, priority="high")
    assert "|" in member
    assert await raw.zcard(q.keys.at(2).delayed) == 1
    assert await q.cancel(member) is CancelOutcome.CANCELLED
    assert await raw.zcard(q.keys.at(2).delayed) == 0
    assert await raw.hlen(q.keys.at(2).delayed_data) == 0
    assert await q.cancel(member) is CancelOutcome.NOT_FOUND
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "", f"{member}:p2")]


async def test_a_waiting_low_message_is_dead_lettered_once_per_group(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    q, _ = await mq.create_queue_pair("c")
    await mq.store.ensure_groups([q.stream], ["B"])
    low = await q.send_message({"k": 1}, priority="low")
    keep = await q.send_message({"k": 2}, priority="low")
    assert split_id(low)[1] == 0
    assert await q.cancel(low) is CancelOutcome.CANCELLED
    assert await _dead(mq, "c") == [
        ({"k": 1}, "cancelled", "B", low),
        ({"k": 1}, "cancelled", "c-group", low),
    ]
    left = [sid.decode() for sid, _ in await _entries(raw, q.keys.at(0).stream)]
    assert left == [split_id(keep)[0]]
    assert await q.cancel(low) is CancelOutcome.NOT_FOUND


async def test_level_messages_are_cancelled_by_their_message_id(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    q, _ = await mq.create_queue_pair("c")
    high = await q.send_message({"k": 1}, message_id="order-1", priority="high")
    member = await q.send_message({"k": 2}, message_id="order-2", delay=30, priority="low")
    # A duplicate returns the first send's id as it was: with its level, whatever the
    # priority of the duplicate.
    assert await q.send_message({"k": 1}, message_id="order-1", priority="high") == high
    assert await q.send_message({"k": 1}, message_id="order-1") == high
    normal = await q.send_message({"k": 3}, message_id="order-3")
    assert await q.send_message({"k": 3}, message_id="order-3", priority="high") == normal
    assert await q.cancel("order-1") is CancelOutcome.CANCELLED
    assert await q.cancel("order-2") is CancelOutcome.CANCELLED
    assert await raw.xlen(q.keys.at(2).stream) == 0
    assert await raw.zcard(q.keys.at(0).delayed) == 0
    assert await _dead(mq, "c") == [
        ({"k": 1}, "cancelled", "c-group", high),
        ({"k": 2}, "cancelled", "", f"{member}:p0"),
    ]
    assert [m.data for m in await q.get_messages(10)] == [{"k": 3}]  # the normal one stays


async def test_a_pending_high_message_is_marked_by_its_name_and_its_retry_refused(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    q, _ = await mq.create_queue_pair("c")
    high = await q.send_message({"k": 1}, priority="high")
    sid, level = split_id(high)
    level_keys = q.keys.at(level)
    assert await _read(raw, level_keys.stream, q.consumer_group, "w1") == [sid.encode()]
    assert await q.cancel(high) is CancelOutcome.RUNNING
    assert await mq.store.cancel_markers(q.keys) == [high.encode()]
    call = mq.store.retry_call(level_keys, q.consumer_group, "w1", sid, 0, 1)
    assert await mq.store.settle_many([call]) == [2]  # refused: left for the worker
    assert await raw.xlen(level_keys.stream) == 1  # no copy written at any level
    assert await raw.xlen(q.stream) == 0
    assert await raw.zcard(level_keys.delayed) == 0


async def test_equal_stream_ids_of_two_levels_are_cancelled_apart(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """An entry of the main stream and one of level 2 with the same stream id (written by
    XADD with that id): a cancel of the plain id marks or removes the main one only, and
    the level's id the level's one only."""
    q, _ = await mq.create_queue_pair("c")
    sid = await q.send_message({"k": 1})
    ((_, fields),) = await _entries(raw, q.stream)
    level = q.keys.at(2)
    await raw.xgroup_create(level.stream, q.consumer_group, id="0", mkstream=True)
    await raw.xadd(level.stream, fields, id=sid)
    # Waiting in both: the plain id removes the main entry only.
    assert await q.cancel(sid) is CancelOutcome.CANCELLED
    assert await raw.xlen(q.stream) == 0 and await raw.xlen(level.stream) == 1
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "c-group", sid)]
    # Running in both: each cancel marks its own name; retry.lua refuses only that one.
    await raw.xdel(level.stream, sid)
    sid = cast(bytes, await raw.xadd(q.stream, fields)).decode()
    await raw.xadd(level.stream, fields, id=sid)
    assert await _read(raw, q.stream, q.consumer_group, "w1") == [sid.encode()]
    assert await _read(raw, level.stream, q.consumer_group, "w1") == [sid.encode()]
    assert await q.cancel(sid) is CancelOutcome.RUNNING
    assert await mq.store.cancel_markers(q.keys) == [sid.encode()]
    level_retry = mq.store.retry_call(level, q.consumer_group, "w1", sid, 60_000, 1)
    main_retry = mq.store.retry_call(q.keys, q.consumer_group, "w1", sid, 60_000, 1)
    assert await mq.store.settle_many([level_retry, main_retry]) == [1, 2]
    assert await q.cancel(f"{sid}:p2") is CancelOutcome.CANCELLED  # its retry, in backoff
    assert await raw.zcard(level.delayed) == 0
    assert await mq.store.cancel_markers(q.keys) == [sid.encode()]


async def test_a_partitioned_queue_cancels_a_level_message(mq: LeanMQ) -> None:
    pq = mq.queue("p", partitions=3)
    await pq.create()
    ids = {k: await pq.send_message({"k": k}, key=k, priority="high") for k in "abc"}
    member = await pq.send_message({"k": "d"}, key="d", delay=30, priority="low")
    assert await pq.cancel(ids["b"], key="b") is CancelOutcome.CANCELLED
    assert await pq.cancel(member, key="d") is CancelOutcome.CANCELLED
    assert await pq.cancel(ids["b"], key="b") is CancelOutcome.NOT_FOUND
    assert (await pq.get_info()).delayed_messages == 0


# -- the worker ----------------------------------------------------------------------------


async def test_a_running_high_handler_is_cancelled_within_a_second(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("c")
    rec = Recorder(60)
    q.handler(max_retries=5)(rec.handle)
    async with mq.worker(**FAST) as worker:
        high = await q.send_message({"k": 1}, priority="high")
        await wait_until(lambda: bool(rec.started))
        asked = anyio.current_time()
        assert await q.cancel(high) is CancelOutcome.RUNNING
        await wait_until(lambda: bool(rec.cancelled), within=5)
        assert rec.cancelled[0][1] - asked < 1.0
        await wait_until(lambda: _any_dead(mq, "c"))
        assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "c-group", high)]
        assert worker.stats.retried == 0 and worker.stats.handled == 0
    assert rec.finished == []
    assert await q.cancel(high) is CancelOutcome.FINISHED


async def _any_dead(mq: LeanMQ, name: str) -> bool:
    return bool(await _dead(mq, name))


async def test_cancelled_level_messages_never_run_under_a_worker(mq: LeanMQ) -> None:
    """A delayed high one and a waiting low one, cancelled: the rest run, they never do."""
    q, _ = await mq.create_queue_pair("c")
    rec = Recorder(0)
    q.handler(rec.handle)
    delayed = await q.send_message({"k": "high-later"}, delay=0.5, priority="high")
    await q.send_message({"k": "high"}, delay=0.5, priority="high")
    low = await q.send_message({"k": "low"}, priority="low")
    await q.send_message({"k": "low-kept"}, priority="low")
    assert await q.cancel(delayed) is CancelOutcome.CANCELLED
    assert await q.cancel(low) is CancelOutcome.CANCELLED
    async with mq.worker(**FAST):
        await wait_until(lambda: len(rec.finished) == 2)
        await anyio.sleep(0.3)
    assert sorted(d["k"] for d in rec.started) == ["high", "low-kept"]
    assert await _dead(mq, "c") == [
        ({"k": "high-later"}, "cancelled", "", f"{delayed}:p2"),
        ({"k": "low"}, "cancelled", "c-group", low),
    ]


async def test_a_cancel_of_a_plain_id_leaves_the_level_entry_of_that_id_running(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """The worker's own check: both entries (same stream id, main and level 2) run; the
    cancel of the plain id stops the main one only."""
    q, _ = await mq.create_queue_pair("c")
    sid = await q.send_message({"k": "main"})
    ((_, fields),) = await _entries(raw, q.stream)
    level = q.keys.at(2)
    await raw.xgroup_create(level.stream, q.consumer_group, id="0", mkstream=True)
    await raw.xadd(level.stream, {**fields}, id=sid)
    rec = Recorder(1.5)
    q.handler(concurrency=2)(rec.handle)
    async with mq.worker(**FAST):
        await wait_until(lambda: len(rec.started) == 2)
        assert await q.cancel(sid) is CancelOutcome.RUNNING
        await wait_until(lambda: len(rec.finished) == 1, within=5)
    assert [data for data, _ in rec.cancelled] == [{"k": "main"}]
    assert await _dead(mq, "c") == [({"k": "main"}, "cancelled", "c-group", sid)]


async def test_a_high_handler_failing_after_its_cancel_is_dead_lettered_not_retried(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """The handler shields itself and fails after the cancel: retry.lua (called with the
    level's keys) refuses the retry, the worker dead-letters it 'cancelled'."""
    q, _ = await mq.create_queue_pair("c")
    go_on = anyio.Event()
    started: list[str] = []

    @q.handler(max_retries=5)
    async def handle(message: Message[Any]) -> None:
        started.append(message.id)
        with anyio.CancelScope(shield=True):
            await go_on.wait()
        raise RuntimeError("failed after the cancel")

    async with mq.worker(**FAST) as worker:
        high = await q.send_message({"k": 1}, priority="high")
        await wait_until(lambda: bool(started))
        assert await q.cancel(high) is CancelOutcome.RUNNING
        go_on.set()
        await wait_until(lambda: _any_dead(mq, "c"))
        await anyio.sleep(0.3)
        assert worker.stats.retried == 0
    assert started == [high]
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "c-group", high)]
    for keys in q.keys.levels():  # no retry scheduled or written at any level
        assert await raw.zcard(keys.delayed) == 0
    assert await raw.xlen(q.stream) == 0 and await raw.xlen(q.keys.at(0).stream) == 0
    assert (await q.get_info()).pending_messages == 0


async def test_a_high_marker_set_while_no_worker_listened_is_reconciled(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """Cancelled while a dead consumer held it: the worker that reclaims it from its level
    learns the marker (its level's name) from Redis at start and dead-letters it unrun."""
    q, _ = await mq.create_queue_pair("c")
    high = await q.send_message({"k": 1}, priority="high")
    await _read(raw, q.keys.at(2).stream, q.consumer_group, "dead")
    assert await q.cancel(high) is CancelOutcome.RUNNING
    rec = Recorder(0)
    q.handler(visibility_timeout=0.2)(rec.handle)
    async with mq.worker(**FAST, reclaim_interval=0.1):
        await wait_until(lambda: _any_dead(mq, "c"))
    assert rec.started == []
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "c-group", high)]


async def test_a_group_that_reads_a_cancelled_low_message_later_never_runs_it(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """Running in the queue's group when cancelled, unread in B: B's worker (its local
    check, by the level's name) dead-letters it unrun."""
    q, _ = await mq.create_queue_pair("c")
    await mq.store.ensure_groups([q.stream], ["B"])
    low = await q.send_message({"k": 1}, priority="low")
    await _read(raw, q.keys.at(0).stream, q.consumer_group, "a-worker")
    assert await q.cancel(low) is CancelOutcome.RUNNING
    rec = Recorder(0)
    q.handler(group="B")(rec.handle)
    async with mq.worker(**FAST):
        await wait_until(lambda: _any_dead(mq, "c"))
    assert rec.started == []
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "B", low)]


async def test_post_cancel_of_a_high_message(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("orders")
    high = await q.send_message({"k": 1}, priority="high")
    transport = httpx.ASGITransport(app=admin_app(mq, token="t"))
    auth = {"Authorization": "Bearer t"}
    async with httpx.AsyncClient(transport=transport, base_url="http://a", headers=auth) as c:
        r = await c.post(f"/cancel/orders/{high}")
        assert r.json() == {"queue": "orders", "id": high, "outcome": "cancelled"}
        assert (await c.post("/cancel/orders/1-1:p2")).json()["outcome"] == "not_found"


async def test_cancel_of_level_messages_on_a_cluster(scmq: LeanMQ) -> None:
    """The script's fifteen keys are in the queue's slot; a running high one is stopped."""
    pq = scmq.queue("pc", partitions=3)
    await pq.create()
    rec = Recorder(60)
    pq.handler(rec.handle)
    delayed = await pq.send_message({"k": 0}, key="a", delay=30, priority="low")
    assert await pq.cancel(delayed, key="a") is CancelOutcome.CANCELLED
    async with scmq.worker(**FAST):
        high = await pq.send_message({"k": 1}, key="b", priority="high")
        await wait_until(lambda: bool(rec.started), within=15)
        assert await pq.cancel(high, key="b") is CancelOutcome.RUNNING
        await wait_until(lambda: bool(rec.cancelled), within=5)
    assert rec.finished == []
