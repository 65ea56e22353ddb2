"""The multi-step moves are atomic: a script that fails leaves its source as it was.

Two ways to make a script fail against a real Redis: a key of the wrong type (``SET`` on
a stream's key: checked before the script writes anything), and a stream whose last id
is the largest possible one, so that ``XADD *`` inside the script fails after the checks.
"""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import ConfigurationError, LeanMQ, Queue, RedisOperationError

pytestmark = pytest.mark.anyio

MAX_ID = "18446744073709551615-18446744073709551615"


@pytest.fixture
async def pair(mq: LeanMQ) -> tuple[Queue, Queue]:
    return await mq.create_queue_pair("moves")


async def pending(raw: aioredis.Redis, queue: Queue) -> dict[str, str]:
    """Pending ids of the queue's group, with the consumer holding each."""
    rows = await raw.xpending_range(queue.stream, queue.consumer_group, "-", "+", 1000)
    return {r["message_id"].decode(): r["consumer"].decode() for r in rows}


async def deliver(raw: aioredis.Redis, queue: Queue, group: str, count: int) -> list[str]:
    """Deliver entries to ``group`` with a plain XREADGROUP (no expiry check: no race
    with a short TTL); return their ids."""
    reply = await raw.xreadgroup(group, "c", {queue.stream: ">"}, count=count)
    entries = next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1]
    return [sid.decode() for sid, _ in entries]


async def break_by_type(raw: aioredis.Redis, key: str) -> None:
    await raw.delete(key)
    await raw.set(key, "not what you expect")


async def exhaust(raw: aioredis.Redis, stream: str) -> None:
    """Make ``XADD <stream> *`` fail: the stream's last id is the largest there is."""
    await raw.xadd(stream, {"filler": "1"}, id=MAX_ID)


# -- DEAD_LETTER ---------------------------------------------------------------------------


@pytest.mark.parametrize("breaker", [break_by_type, exhaust])
async def test_dead_letter_failure_keeps_the_source(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis, breaker: object
) -> None:
    queue, dlq = pair
    await queue.send_messages(["a", "b", "c"])
    msgs = await queue.get_messages(count=3)
    before = await raw.xrange(queue.stream)
    await breaker(raw, dlq.stream)  # type: ignore[operator]
    dlq_before = await raw.dump(dlq.stream)
    with pytest.raises(RedisOperationError, match="move to DLQ"):
        await queue.move_to_dlq([m.id for m in msgs], "fails")
    # Still pending (not acked), still in the stream, and the DLQ unchanged.
    assert await pending(raw, queue) == {m.id: mq.consumer_name for m in msgs}
    assert await raw.xrange(queue.stream) == before
    assert await raw.dump(dlq.stream) == dlq_before
    # Once the DLQ is repaired the same call works.
    await raw.delete(dlq.stream)
    assert (await queue.move_to_dlq([m.id for m in msgs], "works")).count == 3
    assert await pending(raw, queue) == {}
    assert await raw.xlen(dlq.stream) == 3


async def test_dead_letter_of_garbage_during_a_read_keeps_it_pending(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    junk = (await raw.xadd(queue.stream, {"junk": "1"})).decode()
    await break_by_type(raw, dlq.stream)
    with pytest.raises(RedisOperationError):
        await queue.get_messages()
    assert await pending(raw, queue) == {junk: mq.consumer_name}
    assert await raw.xlen(queue.stream) == 1


async def test_dead_letter_is_copy_and_ack_together(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await queue.send_messages(["x", "y"])
    x, y = await queue.get_messages(count=2)
    result = await queue.move_to_dlq([x.id, "1-0", y.id], "both")
    assert result.moved == [x.id, y.id] and len(result) == 2
    assert result.not_moved == {"1-0": "not_found"}  # 1-0 never existed
    assert await pending(raw, queue) == {}
    copies = await raw.xrange(dlq.stream)
    assert [f[b"dlq.id"].decode() for _, f in copies] == [x.id, y.id]
    # The source entries stay in the stream as acknowledged history.
    assert await raw.xlen(queue.stream) == 2


async def test_dead_letter_with_owner_moves_only_what_it_owns(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await queue.send_messages(["mine", "theirs"])
    (mine,) = await queue.get_messages(consumer_id="me")
    (theirs,) = await queue.get_messages(consumer_id="other")
    items = [(m.id, "owned only", "ValueError", "tb", 2) for m in (mine, theirs)]
    moved = await mq.store.dead_letter(queue.keys, queue.consumer_group, "me", queue.name, items)
    assert moved.moved == [mine.id] and moved.not_moved == {theirs.id: "not_owned"}
    assert await pending(raw, queue) == {theirs.id: "other"}
    (dead,) = await dlq.get_messages()
    assert dead.data == "mine"
    info = dead.dead_letter
    assert info is not None
    assert (info.reason, info.error_type, info.traceback, info.attempts) == (
        "owned only",
        "ValueError",
        "tb",
        2,
    )


async def test_move_to_dlq_moves_only_pending_ids(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await queue.send_messages(["acked", "pending"])
    acked, held = await queue.get_messages(count=2)
    await queue.acknowledge_messages([acked.id])
    unread = await queue.send_message("unread")
    result = await queue.move_to_dlq([unread, acked.id, held.id, held.id], "explicit")
    assert result.moved == [held.id] and result.count == 1 and len(result) == 1
    assert result.not_moved == {unread: "not_pending", acked.id: "not_pending"}
    assert [m.data for m in await dlq.peek_messages()] == ["pending"]
    assert await pending(raw, queue) == {}
    # The undelivered one was not copied, so it is delivered (once) as usual.
    assert [m.id for m in await queue.get_messages(count=5)] == [unread]


async def test_move_to_dlq_refuses_a_reason_that_is_not_a_str(pair: tuple[Queue, Queue]) -> None:
    queue, _ = pair
    await queue.send_message("x")
    (msg,) = await queue.get_messages()
    with pytest.raises(ConfigurationError, match="reason must be a str"):
        await queue.move_to_dlq([msg.id], 42)  # type: ignore[arg-type]
    assert (await queue.move_to_dlq([], "nothing")).count == 0


# -- REQUEUE -------------------------------------------------------------------------------


@pytest.mark.parametrize("breaker", [break_by_type, exhaust])
async def test_requeue_failure_keeps_the_dlq_entries(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis, breaker: object
) -> None:
    queue, dlq = pair
    await queue.send_messages(["a", "b"])
    msgs = await queue.get_messages(count=2)
    await queue.move_to_dlq([m.id for m in msgs], "dead")
    dead = await dlq.get_messages(count=2)
    dlq_before = await raw.xrange(dlq.stream)
    await breaker(raw, queue.stream)  # type: ignore[operator]
    main_before = await raw.dump(queue.stream)
    with pytest.raises(RedisOperationError, match="requeue"):
        await dlq.requeue_messages([d.id for d in dead])
    assert await raw.xrange(dlq.stream) == dlq_before
    assert set(await pending(raw, dlq)) == {d.id for d in dead}
    assert await raw.dump(queue.stream) == main_before


async def test_requeue_failure_after_a_tombstone_changes_nothing(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await queue.send_messages(["lost", "kept"])
    lost, kept = await queue.get_messages(count=2)
    await raw.xdel(queue.stream, lost.id)
    await queue.move_to_dlq([lost.id, kept.id], "x")  # a tombstone, then a real copy
    tomb, real = await dlq.peek_messages()
    assert tomb.data is None and real.data == "kept"
    await break_by_type(raw, queue.stream)
    with pytest.raises(RedisOperationError):
        await dlq.requeue_messages([tomb.id, real.id])
    assert [m.id for m in await dlq.peek_messages()] == [tomb.id, real.id]


async def test_a_tombstone_is_not_requeued_and_stays(
    pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await queue.send_message("gone")
    (msg,) = await queue.get_messages()
    await raw.xdel(queue.stream, msg.id)
    await queue.move_to_dlq([msg.id], "lost")
    (tomb,) = await dlq.get_messages()
    assert await dlq.requeue_messages([tomb.id]) == 0
    assert [m.id for m in await dlq.peek_messages()] == [tomb.id]
    assert await queue.get_messages() == []
    assert await dlq.delete_messages([tomb.id]) == 1  # removed only on purpose


async def test_requeue_mixed_ids(pair: tuple[Queue, Queue]) -> None:
    queue, dlq = pair
    await queue.send_messages([1, 2])
    msgs = await queue.get_messages(count=2)
    await queue.move_to_dlq([m.id for m in msgs], "x")
    d1, d2 = await dlq.peek_messages()
    assert await dlq.requeue_messages([d1.id, "1-1", d2.id, d1.id]) == 2
    assert [m.data for m in await queue.get_messages(count=5)] == [1, 2]
    assert await dlq.peek_messages() == []


# -- EXPIRE --------------------------------------------------------------------------------


@pytest.mark.parametrize("breaker", [break_by_type, exhaust])
async def test_expire_to_dlq_failure_keeps_the_stream(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis, breaker: object
) -> None:
    queue, dlq = pair
    await queue.send_message("handled", ttl=0.05)
    await queue.send_message("unread", ttl=0.05)
    (handled,) = await deliver(raw, queue, queue.consumer_group, 1)
    await queue.acknowledge_messages([handled])
    await anyio.sleep(0.15)
    before = await raw.xrange(queue.stream)
    await breaker(raw, dlq.stream)  # type: ignore[operator]
    with pytest.raises(RedisOperationError, match="expire"):
        await mq.process_expired_messages(policy="dlq")
    assert await raw.xrange(queue.stream) == before  # nothing deleted, not even "handled"
    assert await raw.zcard(queue.keys.expiry) == 2
    # The drop policy does not need the DLQ.
    assert await mq.process_expired_messages(policy="drop") == 2
    assert await raw.xlen(queue.stream) == 0


async def test_expire_with_a_broken_expiry_index(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, _ = pair
    await queue.send_message("x")
    await break_by_type(raw, queue.keys.expiry)
    with pytest.raises(RedisOperationError):
        await mq.process_expired_messages()
    assert await raw.xlen(queue.stream) == 1


async def test_expire_dead_letters_only_what_a_group_has_not_handled(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = pair
    await raw.xgroup_create(queue.stream, "audit", id="0")
    await queue.send_messages(["both done", "audit pending", "audit unread"], ttl=0.05)
    assert await queue.acknowledge_messages(await deliver(raw, queue, queue.consumer_group, 3)) == 3
    audit_read = await deliver(raw, queue, "audit", 2)
    await raw.xack(queue.stream, "audit", audit_read[0])
    await anyio.sleep(0.15)
    # "audit pending" is audit's consumer's to settle: left alone (re-checked later).
    assert await mq.process_expired_messages(policy="dlq") == 2
    (dead,) = await dlq.peek_messages()
    assert dead.data == "audit unread"
    assert dead.dead_letter is not None and dead.dead_letter.group == "audit"
    summary = await raw.xpending(queue.stream, "audit")
    assert summary["pending"] == 1
    assert [m.data for m in await queue.peek_messages()] == ["audit pending"]


# -- MOVE_DUE, RETRY and group creation --------------------------------------------------


async def test_move_due_failure_keeps_the_delayed_entries(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, _ = pair
    await queue.send_messages([1, 2], delay=0.05)
    await anyio.sleep(0.15)
    await exhaust(raw, queue.stream)
    with pytest.raises(RedisOperationError, match="move due"):
        await mq.store.move_due(queue.keys)
    assert await raw.zcard(queue.keys.delayed) == 2
    assert await raw.hlen(queue.keys.delayed_data) == 2
    await break_by_type(raw, queue.stream)
    with pytest.raises(RedisOperationError, match="WRONGTYPE"):
        await mq.store.move_due(queue.keys)
    await raw.delete(queue.stream)
    assert await mq.store.move_due(queue.keys) == (2, -1)


async def test_move_due_skips_a_member_without_data(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, _ = pair
    await raw.zadd(queue.keys.delayed, {"orphan": 0})
    await queue.send_message("real", delay=0.01)
    await anyio.sleep(0.1)
    assert await mq.store.move_due(queue.keys) == (1, -1)
    assert await raw.exists(queue.keys.delayed, queue.keys.delayed_data) == 0
    assert [m.data for m in await queue.get_messages(count=5)] == ["real"]


@pytest.mark.parametrize("broken", ["delayed", "delayed_data"])
async def test_retry_failure_keeps_the_message_pending(
    mq: LeanMQ, pair: tuple[Queue, Queue], raw: aioredis.Redis, broken: str
) -> None:
    queue, _ = pair
    await queue.send_message("again")
    (msg,) = await queue.get_messages()
    await break_by_type(raw, getattr(queue.keys, broken))
    store, group, consumer = mq.store, queue.consumer_group, mq.consumer_name
    (failed,) = await store.settle_many(
        [store.retry_call(queue.keys, group, consumer, msg.id, 1000, 1)]
    )
    assert isinstance(failed, RedisOperationError)
    assert await pending(raw, queue) == {msg.id: mq.consumer_name}
    assert await raw.xlen(queue.stream) == 1
    await raw.delete(getattr(queue.keys, broken))
    (done,) = await store.settle_many([store.retry_call(queue.keys, group, consumer, msg.id, 0, 1)])
    assert done == 1
    assert await pending(raw, queue) == {}
    (again,) = await queue.get_messages()
    assert (again.data, again.attempt) == ("again", 2)


async def test_ensure_groups_refuses_a_key_of_another_type(mq: LeanMQ, raw: aioredis.Redis) -> None:
    keys = mq.queue("grp").keys
    await raw.set(keys.dlq, "x")
    with pytest.raises(RedisOperationError, match="WRONGTYPE"):
        await mq.store.ensure_groups([keys.stream, keys.dlq], ["g1", "g2"])
    assert await raw.exists(keys.stream) == 0  # checked before the first group was made
    await raw.delete(keys.dlq)
    assert await mq.store.ensure_groups([keys.stream, keys.dlq], ["g1", "g2"]) == 2
    assert await mq.store.ensure_groups([keys.stream, keys.dlq], ["g1", "g2"]) == 0


async def test_dead_letter_on_a_stream_without_the_group_is_not_half_done(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("no-group")  # declared only: the stream exists, the group does not
    sid = await queue.send_message("x")
    # Nothing is pending without the group, so nothing moves (and the script does not
    # fail half-way on the missing group).
    result = await queue.move_to_dlq([sid, "1-1"], "no group")
    assert result.not_moved == {sid: "not_pending", "1-1": "not_found"}
    assert await raw.xlen(queue.keys.dlq) == 0
    assert await raw.xlen(queue.stream) == 1
