"""Cancellation by id (issue 16 part 4): the queue API, the worker, a worker process, CLI, HTTP.

Every test runs on a real redis-server. The rule (README "Cancellation"): a message no
worker started never runs and goes to the DLQ with reason "cancelled"; a running one is
cancelled in its handler within moments and goes to the DLQ the same way; one every
group finished is left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from leanmq_async import CancelOutcome, LeanMQ, Message
from leanmq_async.exceptions import ConfigurationError, WrongQueueKindError
from leanmq_async.testing import RedisServer

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent


async def _dead(mq: LeanMQ, name: str) -> list[tuple[Any, str, str]]:
    dlq = mq.queue(name).dead_letter_queue()
    return [
        (m.data, m.dead_letter.reason, m.dead_letter.group)
        for m in await dlq.peek_messages(count=100)
        if m.dead_letter is not None
    ]


# -- the queue API ---------------------------------------------------------------------


async def test_a_cancelled_delayed_message_is_dead_lettered_and_never_delivered(
    mq: LeanMQ,
) -> None:
    q, _ = await mq.create_queue_pair("c")
    member = await q.send_message({"k": 1}, delay=5)
    assert await q.cancel(member) is CancelOutcome.CANCELLED
    assert await q.cancel(member) is CancelOutcome.NOT_FOUND
    assert (await q.get_info()).delayed_messages == 0
    mq.store.clock_shift_ms = 10_000  # past its due time
    assert await q.get_messages(10) == []
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "")]


async def test_a_waiting_message_in_a_stream_with_several_groups(mq: LeanMQ) -> None:
    """Waiting in both groups: one DLQ entry per group, and the entry is gone."""
    q, _ = await mq.create_queue_pair("c")
    await mq.store.ensure_groups([q.stream], ["B"])
    sid = await q.send_message({"k": 1})
    keep = await q.send_message({"k": 2})
    assert await q.cancel(sid) is CancelOutcome.CANCELLED
    assert sorted(await _dead(mq, "c"), key=str) == [
        ({"k": 1}, "cancelled", "B"),
        ({"k": 1}, "cancelled", "c-group"),
    ]
    assert [m.id for m in await q.get_messages(10)] == [keep]


async def test_waiting_in_one_group_and_finished_in_the_other(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("c")
    await mq.store.ensure_groups([q.stream], ["B"])
    sid = await q.send_message({"k": 1})
    (m,) = await q.get_messages(1)
    await q.acknowledge_messages([m.id])
    assert await q.cancel(sid) is CancelOutcome.CANCELLED
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "B")]


async def test_already_finished_unknown_and_bad_ids(mq: LeanMQ) -> None:
    q, dlq = await mq.create_queue_pair("c")
    sid = await q.send_message({"k": 1})
    (m,) = await q.get_messages(1)
    await q.acknowledge_messages([m.id])
    assert await q.cancel(sid) is CancelOutcome.FINISHED
    assert await q.cancel("1-1") is CancelOutcome.NOT_FOUND
    assert await q.cancel("no-such-message") is CancelOutcome.NOT_FOUND
    assert await _dead(mq, "c") == []
    with pytest.raises(ConfigurationError):
        await q.cancel("")
    with pytest.raises(WrongQueueKindError):
        await dlq.cancel(sid)


async def test_an_idempotent_send_is_cancelled_by_its_message_id(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("c")
    await q.send_message({"k": 1}, message_id="order-7")
    await q.send_message({"k": 2}, message_id="order-8", delay=30)
    assert await q.cancel("order-7") is CancelOutcome.CANCELLED
    assert await q.cancel("order-8") is CancelOutcome.CANCELLED
    assert (await q.get_info()).delayed_messages == 0
    assert await q.get_messages(10) == []


async def test_a_pending_message_is_marked_and_its_retry_refused(mq: LeanMQ) -> None:
    """Running (pending): marked; the worker's retry script then refuses to retry it."""
    q, _ = await mq.create_queue_pair("c")
    sid = await q.send_message({"k": 1})
    (m,) = await q.get_messages(1, consumer_id="w1")
    assert await q.cancel(sid) is CancelOutcome.RUNNING
    assert await mq.store.cancel_markers(q.keys) == [sid.encode()]
    call = mq.store.retry_call(q.keys, q.consumer_group, "w1", sid, 0, 1)
    assert await mq.store.settle_many([call]) == [2]
    assert (await q.get_info()).pending_messages == 1  # left for the worker to dead-letter


async def test_a_partitioned_queue_finds_the_partition(mq: LeanMQ) -> None:
    pq = mq.queue("p", partitions=3)
    await pq.create()
    ids = [await pq.send_message({"k": k}, key=str(k)) for k in range(6)]
    assert await pq.cancel(ids[4], key="4") is CancelOutcome.CANCELLED
    assert await pq.cancel("1-1", key="4") is CancelOutcome.NOT_FOUND
    left = [m.data["k"] for q in pq.partitions for m in await q.get_messages(10)]
    assert sorted(left) == [0, 1, 2, 3, 5]
