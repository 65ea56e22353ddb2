"""Message priorities on a real Redis: order, the starvation guard, delays, retries, reclaim."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import (
    ConfigurationError,
    DeadLetteredError,
    InvalidMessageIdError,
    LeanMQ,
    Message,
    Reject,
)
from leanmq_async.priority import GUARD_EVERY, Priority, level_of, split_id
from leanmq_async.testing import RedisServer
from tests.cluster_fixtures import scmq, small_cluster
from tests.worker_apps.common import app_env, log_tail, settled, start_app, wait_until

pytestmark = pytest.mark.anyio

__all__ = ["scmq", "small_cluster"]  # fixtures, imported for pytest

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


def no_wait(_retry: int) -> float:
    return 0.01


async def test_priority_levels_are_named_and_checked() -> None:
    assert [level_of(p) for p in ("low", "normal", "HIGH", None, 0, 2)] == [0, 1, 2, 1, 0, 2]
    assert level_of(Priority.HIGH) == 2
    for bad in (3, -1, "urgent", 1.5, True):
        with pytest.raises(ConfigurationError, match="priority must be"):
            level_of(bad)  # type: ignore[arg-type]


async def test_ten_high_after_a_hundred_low_run_first(mq: LeanMQ, raw: aioredis.Redis) -> None:
    """The issue's done-when: a stopped worker, concurrency 1."""
    queue = mq.queue("jobs")
    order: list[str] = []

    @queue.handler(concurrency=1)
    async def handle(data: dict[str, Any]) -> None:
        order.append(data["kind"])

    await mq.create_queue_pair("jobs")
    await queue.send_messages([{"kind": "low"}] * 100, priority="low")
    ids = [await queue.send_message({"kind": "high"}, priority="high") for _ in range(10)]
    assert all(split_id(i)[1] == 2 for i in ids)
    async with mq.worker(**FAST):
        await wait_until(lambda: len(order) >= 110, what="110 messages handled")
    assert order[:10] == ["high"] * 10
    assert order[10:] == ["low"] * 100


async def test_high_runs_before_a_default_backlog(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("mixed")
    order: list[int] = []

    @queue.handler(concurrency=1)
    async def handle(msg: Message[dict[str, Any]]) -> None:
        order.append(split_id(msg.id)[1])

    await mq.create_queue_pair("mixed")
    await queue.send_messages([{}] * 5)  # the default level: the main stream
    await queue.send_messages([{}] * 5, priority=Priority.LOW)
    await queue.send_messages([{}] * 5, priority=Priority.HIGH)
    async with mq.worker(**FAST):
        await wait_until(lambda: len(order) >= 15, what="15 handled")
    assert order == [2] * 5 + [1] * 5 + [0] * 5
    assert await settled(raw, queue.stream, queue.consumer_group)
    assert await settled(raw, queue.keys.at(2).stream, queue.consumer_group)


async def test_starvation_guard_takes_a_low_one_every_so_often(mq: LeanMQ) -> None:
    queue = mq.queue("busy")
    order: list[str] = []

    @queue.handler(concurrency=1)
    async def handle(data: dict[str, Any]) -> None:
        order.append(data["kind"])

    await mq.create_queue_pair("busy")
    await queue.send_messages([{"kind": "low"}] * 3, priority="low")
    await queue.send_messages([{"kind": "high"}] * (3 * GUARD_EVERY), priority="high")
    async with mq.worker(**FAST):
        await wait_until(lambda: len(order) >= 3 * GUARD_EVERY + 3, what="all handled")
    # While high ones wait, one claim in GUARD_EVERY reads the low level first.
    lows = [i for i, kind in enumerate(order) if kind == "low"]
    assert lows == [GUARD_EVERY - 1, 2 * GUARD_EVERY - 1, 3 * GUARD_EVERY - 1]


async def test_a_new_level_is_noticed_by_a_running_worker(mq: LeanMQ) -> None:
    queue = mq.queue("late")
    seen: list[int] = []

    @queue.handler
    async def handle(msg: Message[dict[str, Any]]) -> None:
        seen.append(split_id(msg.id)[1])

    await mq.create_queue_pair("late")
    async with mq.worker(**FAST):
        await queue.send_message({})
        await wait_until(lambda: len(seen) == 1, what="a plain message")
        with anyio.fail_after(5):  # noticed within LEVEL_CHECK + block_ms
            await queue.send_message({}, priority="high")
            await wait_until(lambda: len(seen) == 2, what="the high one")
        await queue.send_message({}, priority="low")
        await wait_until(lambda: len(seen) == 3, what="the low one")
    assert seen == [1, 2, 0]


async def test_delayed_and_retried_messages_keep_their_priority(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("later")
    calls: list[tuple[str, int]] = []

    @queue.handler(backoff=no_wait, max_retries=2)
    async def handle(msg: Message[dict[str, Any]]) -> None:
        calls.append((msg.id, msg.attempt))
        if msg.attempt == 1:
            raise RuntimeError("once more")

    await mq.create_queue_pair("later")
    await queue.send_message({}, priority="high", delay=0.2)
    assert await raw.zcard(queue.keys.at(2).delayed) == 1
    async with mq.worker(**FAST):
        await wait_until(lambda: len(calls) >= 2, what="the retry ran")
        await wait_until(
            lambda: settled(raw, queue.keys.at(2).stream, queue.consumer_group), what="ack"
        )
    assert [split_id(i)[1] for i, _ in calls] == [2, 2]
    assert [a for _, a in calls] == [1, 2]
    assert await raw.xlen(queue.stream) == 0  # nothing went to the default level


async def test_a_dead_consumers_high_priority_message_is_reclaimed(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("crash")
    seen: list[str] = []

    @queue.handler(visibility_timeout=0.5)
    async def handle(msg: Message[dict[str, Any]]) -> None:
        seen.append(msg.id)

    await mq.create_queue_pair("crash")
    sid = await queue.send_message({"n": 1}, priority="high")
    # A consumer that read it and died.
    found, _ = await mq.store.claim_new(queue.keys.levels(), queue.consumer_group, "dead", 10)
    assert [len(entries) for _, entries in found] == [1, 0, 0]
    async with mq.worker(**FAST, reclaim_interval=0.1):
        await wait_until(lambda: len(seen) == 1, what="the reclaim")
        await wait_until(
            lambda: settled(raw, queue.keys.at(2).stream, queue.consumer_group), what="ack"
        )
    assert seen == [sid]


async def test_partitioned_queue_has_levels_per_partition(mq: LeanMQ) -> None:
    pq = mq.queue("events", partitions=2)
    order: list[str] = []

    @pq.handler(concurrency=1)
    async def handle(data: dict[str, Any]) -> None:
        order.append(data["kind"])

    await pq.create()
    await pq.send_messages([{"kind": "low"}] * 10, key="a", priority="low")
    await pq.send_message({"kind": "high"}, key="a", priority="high")
    async with mq.worker(**FAST, concurrency=1):
        await wait_until(lambda: len(order) >= 11, what="all handled")
    assert order[0] == "high"


async def test_purge_and_delete_take_every_level(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("gone")
    await mq.create_queue_pair("gone")
    await queue.send_message({}, priority="high")
    await queue.send_message({}, priority="low", delay=60)
    await queue.send_message({})
    assert await queue.purge() == 2
    assert await raw.xlen(queue.keys.at(2).stream) == 0
    assert await raw.zcard(queue.keys.at(0).delayed) == 0
    await queue.send_message({}, priority="high")
    await mq.delete_queue("gone")
    assert not await raw.exists(queue.keys.at(2).stream)


async def test_a_level_stream_gets_every_group_of_the_queue(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """Sends (plain, bulk, transaction) and the delayed mover create a level's stream with
    the main stream's groups, so its messages are aimed at every group, as the main's."""
    queue, _ = await mq.create_queue_pair("fan")
    await mq.store.ensure_groups([queue.stream], ["audit"])
    await queue.send_message({"n": 1}, priority="high")
    async with mq.transaction() as tx:
        tx.send_message(queue, {"n": 2}, priority="low")
    await queue.send_message({"n": 3}, priority="low", delay=0.05)  # lands in the same stream
    for level in (0, 2):
        groups = await raw.xinfo_groups(queue.keys.at(level).stream)
        assert sorted(g["name"].decode() for g in groups) == ["audit", "fan-group"]
    await mq.store.move_due(queue.keys.at(0))  # not due yet: nothing moves
    await anyio.sleep(0.1)
    assert (await mq.store.move_due(queue.keys.at(0)))[0] == 1
    for group in ("audit", "fan-group"):
        found, _ = await mq.store.claim_new(queue.keys.levels(), group, "c", 10)
        assert [len(e) for _, e in found] == [1, 0, 2]


async def test_move_due_creates_a_level_stream_with_the_groups(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue, _ = await mq.create_queue_pair("dl")
    await mq.store.ensure_groups([queue.stream], ["other"])
    await queue.send_message({}, priority="high", delay=0.05)
    assert not await raw.exists(queue.keys.at(2).stream)
    await anyio.sleep(0.1)
    assert (await mq.store.move_due(queue.keys.at(2)))[0] == 1
    groups = await raw.xinfo_groups(queue.keys.at(2).stream)
    assert sorted(g["name"].decode() for g in groups) == ["dl-group", "other"]
    assert all(g["lag"] == 1 for g in groups)


async def test_claim_never_takes_more_than_asked(mq: LeanMQ) -> None:
    queue, _ = await mq.create_queue_pair("few")
    await queue.send_messages([{}] * 3, priority="high")
    await queue.send_messages([{}] * 3)
    await queue.send_messages([{}] * 3, priority="low")
    group = queue.consumer_group
    found, last = await mq.store.claim_new(queue.keys.levels(), group, "c", 4)
    assert [(lv, len(e)) for lv, e in found] == [(2, 3), (1, 1), (0, 0)]
    assert last == []  # something was claimed: no wait
    found, _ = await mq.store.claim_new(tuple(reversed(queue.keys.levels())), group, "c", 4)
    assert [(lv, len(e)) for lv, e in found] == [(0, 3), (1, 1), (2, 0)]
    found, last = await mq.store.claim_new(queue.keys.levels(), group, "c", 4)
    assert [len(e) for _, e in found] == [0, 1, 0]
    found, last = await mq.store.claim_new(queue.keys.levels(), group, "c", 4)
    assert [len(e) for _, e in found] == [0, 0, 0]
    assert len(last) == 3 and all("-" in i for i in last)  # where a wait starts from


async def test_info_counts_every_level(mq: LeanMQ) -> None:
    queue, _ = await mq.create_queue_pair("depth")
    await queue.send_messages([{}] * 2)
    await queue.send_messages([{}] * 3, priority="high")
    await queue.send_message({}, priority="low", delay=60)
    await mq.store.claim_new(queue.keys.levels(), queue.consumer_group, "c", 4)
    info = await queue.get_info()
    assert (info.message_count, info.pending_messages, info.delayed_messages) == (5, 4, 1)
    (listed,) = [q for q in await mq.list_queues() if q.name == "depth"]
    assert (listed.message_count, listed.pending_messages) == (5, 4)


async def test_priorities_on_a_cluster(scmq: LeanMQ) -> None:
    """A partitioned queue's levels on a 3-primary cluster: each partition's levels in its
    slot; sends, the claim, a retry and the info counts work there."""
    pq = scmq.queue("cq", partitions=3)
    order: list[tuple[str, int]] = []
    levels: dict[tuple[str, int], int] = {}

    @pq.handler(concurrency=1, backoff=no_wait, max_retries=1)
    async def handle(msg: Message[dict[str, Any]]) -> None:
        order.append((msg.data["kind"], msg.attempt))
        levels[order[-1]] = split_id(msg.id)[1]
        if msg.data["kind"] == "high" and msg.attempt == 1:
            raise RuntimeError("retry me")

    await pq.create()
    await pq.send_messages([{"kind": "low"}] * 5, key="k", priority="low")
    await pq.send_message({"kind": "high"}, key="k", priority="high")
    async with scmq.transaction() as tx:
        tx.send_message(pq.partition_for("k"), {"kind": "normal"})
    assert (await pq.get_info()).message_count == 7
    async with scmq.worker(**FAST, concurrency=1):
        await wait_until(lambda: len(order) >= 8, what="all handled")
    assert order[:2] == [("high", 1), ("normal", 1)]
    assert levels[("high", 2)] == 2  # the retry kept its level
    assert sorted(set(order)) == [("high", 1), ("high", 2), ("low", 1), ("normal", 1)]


async def test_housekeeping_and_trim_cover_the_levels(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue, _ = await mq.create_queue_pair("upkeep")

    @queue.handler(visibility_timeout=0.1)
    async def handle(data: Any) -> None:
        pass

    group = queue.consumer_group
    await queue.send_messages([{}] * 2, priority="high")
    high = queue.keys.at(2).stream
    found, _ = await mq.store.claim_new(queue.keys.levels(), group, "dead-empty", 1)
    await raw.xack(high, group, found[0][1][0][0])
    await mq.store.claim_new(queue.keys.levels(), group, "dead-holding", 1)
    worker = mq.worker(dead_consumer_idle=0.2, retention=0.0)

    async def names() -> set[str]:
        return {c["name"].decode() for c in await raw.xinfo_consumers(high, group)}

    async def swept() -> bool:
        await worker.maintenance.housekeeping_once()
        return await names() == {"dead-holding"}

    await wait_until(swept, within=10, interval=0.2, what="idle consumers of a level removed")
    # Retention 0: the acknowledged entry of the level is trimmed, the pending one kept.
    assert await worker.maintenance.trim_once() == 1
    assert await raw.xlen(high) == 1


async def test_the_queue_api_says_level_ids_are_for_workers(mq: LeanMQ) -> None:
    queue, _ = await mq.create_queue_pair("api")
    sid = await queue.send_message({}, priority="high")
    with pytest.raises(InvalidMessageIdError, match="priority level"):
        await queue.acknowledge_messages([sid])
    assert await queue.get_messages(1) == []  # get_messages reads the normal level only


async def test_a_deleted_main_stream_is_created_again_in_priority_mode(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("reborn")
    seen: list[int] = []

    @queue.handler
    async def handle(msg: Message[dict[str, Any]]) -> None:
        seen.append(split_id(msg.id)[1])

    await mq.create_queue_pair("reborn")
    await queue.send_message({}, priority="high")
    async with mq.worker(**FAST):
        await wait_until(lambda: seen == [2], what="the high one")
        await raw.delete(queue.stream)  # the main stream and its group are gone

        async def recreated() -> bool:
            return bool(await raw.exists(queue.stream))

        await wait_until(recreated, what="the queue created again")
        await queue.send_message({})
        await queue.send_message({}, priority="low")
        await wait_until(lambda: len(seen) == 3, what="both handled")
    assert sorted(seen) == [0, 1, 2]


async def test_two_worker_processes_take_the_high_ones_first(
    redis_server: RedisServer, mq: LeanMQ, raw: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """Two worker processes (concurrency 1 each) on 40 low then 10 high messages sent
    while none ran: the ten high ones are the first ten started, across both."""
    queue, _ = await mq.create_queue_pair("work")
    ledger = f"{prefix}ledger"
    await queue.send_messages(list(range(40)), priority="low")
    await queue.send_messages(list(range(100, 110)), priority="high")
    procs, logs = [], []
    for name in ("a", "b"):
        env = app_env(
            redis_server.url,
            prefix,
            APP_CONSUMER=f"worker-{name}",
            APP_LEDGER=ledger,
            APP_CONCURRENCY=1,
            APP_SLEEP=0.05,
        )
        logs.append(tmp_path / f"worker-{name}.log")
        procs.append(start_app("slow_ledger", env, logs[-1]))
    try:
        await wait_until(lambda: _llen_at_least(raw, ledger, 50), within=60, what="all 50 handled")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await anyio.to_thread.run_sync(proc.wait, 10)
            except Exception:
                proc.kill()
                proc.wait()
    done = [int(x) for x in await raw.lrange(ledger, 0, -1)]
    assert sorted(done) == [*range(40), *range(100, 110)], [log_tail(p) for p in logs]
    # Finish order: a process's last high one may end just after the other's first low.
    assert set(done[:9]) <= set(range(100, 110)), done
    assert set(range(100, 110)) <= set(done[:11]), done


async def _llen_at_least(raw: aioredis.Redis, key: str, n: int) -> bool:
    return int(await raw.llen(key)) >= n


async def test_stats_count_every_level(mq: LeanMQ) -> None:
    from leanmq_async.ops.stats import collect_stats

    queue, _ = await mq.create_queue_pair("counted")
    await queue.send_messages([{}] * 2)
    await queue.send_messages([{}] * 3, priority="high")
    await queue.send_message({}, priority="low", delay=60)
    await mq.store.claim_new(queue.keys.levels(), queue.consumer_group, "c", 4)
    stats = await collect_stats(mq, ["counted"])
    (q,) = stats.queues
    (g,) = q.groups
    assert (q.length, q.delayed, g.pending, g.lag, g.backlog) == (5, 1, 4, 1, 5)
    assert stats.round_trips == 1


async def test_a_long_high_priority_handler_keeps_its_lease(
    redis_server: RedisServer, mq: LeanMQ, raw: aioredis.Redis, prefix: str
) -> None:
    lease = 0.5
    runs: dict[str, int] = {}
    workers = []
    async with (
        LeanMQ(redis_server.url, prefix=prefix, consumer_name="w1") as mq1,
        LeanMQ(redis_server.url, prefix=prefix, consumer_name="w2") as mq2,
    ):
        for client in (mq1, mq2):

            @client.queue("long").handler(concurrency=3, visibility_timeout=lease)
            async def handle(message: Message[int]) -> None:
                runs[message.id] = runs.get(message.id, 0) + 1
                await anyio.sleep(3 * lease)

        queue, _ = await mq.create_queue_pair("long")
        ids = await queue.send_messages(list(range(3)), priority="high")
        ids += await queue.send_messages(list(range(3)), priority="low")
        async with mq1.worker(**FAST) as w1, mq2.worker(**FAST) as w2:
            workers = [w1, w2]
            await wait_until(lambda: sum(runs.values()) == 6, what="six started")
            for level in (0, 2):
                stream = queue.keys.at(level).stream
                await wait_until(
                    lambda s=stream: settled(raw, s, queue.consumer_group),  # type: ignore[misc]
                    within=15,
                    what="all acked",
                )
    assert runs == dict.fromkeys(ids, 1)
    assert [w.stats.reclaimed for w in workers] == [0, 0]


async def test_a_worker_drains_priority_levels_on_a_full_redis() -> None:
    """Under ``noeviction`` at maxmemory Redis refuses writes that grow memory; the claim
    script's XREADGROUP is not one of them, so reading goes on (handling frees memory)."""
    with RedisServer(args=["--maxmemory-policy", "noeviction"]) as server:
        async with LeanMQ(server.url, prefix="full:") as mq:
            queue, _ = await mq.create_queue_pair("big")
            await queue.send_messages(["x" * 2000] * 100, priority="high")
            await queue.send_messages(["x" * 2000] * 100, priority="low")
            info = await mq.redis.info("memory")
            await mq.redis.config_set("maxmemory", int(info["used_memory"]) - 100_000)
            handled = 0

            @queue.handler
            async def handle(data: str) -> None:
                nonlocal handled
                handled += 1

            async with mq.worker(block_ms=100, expire_interval=0.1, startup_timeout=1):
                await wait_until(lambda: handled == 200, within=60, what="all handled")


async def test_call_with_a_priority(mq: LeanMQ) -> None:
    queue = mq.queue("rpc")

    @queue.handler(result_ttl=60)
    async def double(msg: Message[int]) -> list[int]:
        return [msg.data * 2, split_id(msg.id)[1]]

    @mq.queue("rpc-no").handler(result_ttl=60)
    async def refuse(data: int) -> None:
        raise Reject("no")

    await mq.create_queue_pair("rpc")
    await mq.create_queue_pair("rpc-no")
    async with mq.worker(**FAST):
        assert await queue.call(21, priority="high", timeout=10) == [42, 2]
        with pytest.raises(DeadLetteredError, match="no"):
            await mq.queue("rpc-no").call(1, priority="low", timeout=10)
    (dead,) = await mq.queue("rpc-no").dead_letter_queue().peek_messages()
    assert dead.dead_letter is not None and dead.dead_letter.reason == "no"


async def test_requeue_puts_a_message_back_at_its_level(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("back")
    order: list[tuple[int, int]] = []
    fail = True

    @queue.handler(concurrency=1)
    async def handle(msg: Message[int]) -> None:
        if fail:
            raise Reject("not now")
        order.append((msg.data, split_id(msg.id)[1]))

    await mq.create_queue_pair("back")
    await queue.send_message(1, priority="low")
    await queue.send_message(2, priority="high")
    await queue.send_message(3)
    dlq = queue.dead_letter_queue()
    async with mq.worker(**FAST):
        await wait_until(lambda: _llen_is(raw, dlq.stream, 3), what="all three dead-lettered")
    fail = False
    dead = await dlq.peek_messages()
    assert await dlq.requeue_messages([m.id for m in dead]) == 3
    async with mq.worker(**FAST):
        await wait_until(lambda: len(order) == 3, what="requeued ones handled")
    assert order == [(2, 2), (3, 1), (1, 0)]


async def _llen_is(raw: aioredis.Redis, stream: str, n: int) -> bool:
    return int(await raw.xlen(stream)) == n
