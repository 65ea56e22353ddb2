"""leanmq_async.ops: stats, health, alerts and the DLQ tools, against a real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from leanmq_async import LeanMQ, Queue, QueueNotFoundError
from leanmq_async.exceptions import ConfigurationError, InvalidMessageIdError
from leanmq_async.ops import (
    AlertEvent,
    ConfirmationRequiredError,
    HealthThresholds,
    HealthWatcher,
    Stats,
    StatsSampler,
    check_health,
    cleanup,
    clear_queue,
    collect_stats,
    force_process,
    get_dead_letter,
    list_dead_letters,
    purge_dead_letters,
    requeue_dead_letters,
)
from leanmq_async.ops.stats import QueueStats
from leanmq_async.testing import RedisServer, free_port

pytestmark = pytest.mark.anyio


def id_ms(sid: str) -> int:
    return int(sid.split("-")[0])


@pytest.fixture
async def orders(mq: LeanMQ) -> tuple[Queue, Queue]:
    return await mq.create_queue_pair("orders")


async def make_states(queue: Queue) -> dict[str, Any]:
    """10 sent: 1 acked, 1 dead-lettered, 2 pending, 6 never delivered; 2 delayed."""
    ids = await queue.send_messages([{"n": i} for i in range(10)])
    read = await queue.get_messages(count=4)
    await queue.acknowledge_messages([read[0].id])
    await queue.move_to_dlq([read[1].id], "bad data")
    await queue.send_messages(["later-1", "later-2"], delay=3600)
    return {"ids": ids, "pending": [read[2].id, read[3].id], "dead": read[1].id}


# -- stats --------------------------------------------------------------------------------


async def test_stats_of_messages_in_every_state(mq: LeanMQ, orders: tuple[Queue, Queue]) -> None:
    queue, _ = orders
    state = await make_states(queue)
    stats = await collect_stats(mq)
    assert [q.name for q in stats.queues] == ["orders"]
    q = stats.queue("orders")
    assert q.exists and q.error is None
    assert q.length == 10
    assert q.entries_added == 10
    assert q.last_id == state["ids"][-1]
    assert q.pending == 2
    assert q.lag == 6
    assert q.backlog == 8
    assert q.delayed == 2
    assert q.dlq_length == 1
    assert q.dlq_entries_added == 1
    assert q.dlq_pending == 0
    assert q.consumers == 1
    assert q.created_at is not None
    (group,) = q.groups
    assert group.name == "orders-group"
    assert (group.pending, group.lag, group.backlog, group.lag_exact) == (2, 6, 8, True)
    assert group.entries_read == 4
    assert group.last_delivered_id == state["ids"][3]
    assert group.oldest_pending_id == state["pending"][0]
    now_ms = stats.collected_at * 1000
    assert group.oldest_pending_age_s == pytest.approx(
        (now_ms - id_ms(state["pending"][0])) / 1000, abs=0.002
    )
    assert group.oldest_pending_idle_s is not None and group.oldest_pending_idle_s >= 0
    assert q.oldest_pending_age_s == group.oldest_pending_age_s
    (consumer,) = group.consumers
    assert consumer.name == mq.consumer_name
    assert consumer.pending == 2
    assert consumer.idle_s is not None and consumer.idle_s >= 0
    dead = await queue.dead_letter_queue().peek_messages()
    assert q.dlq_oldest_age_s == pytest.approx((now_ms - id_ms(dead[0].id)) / 1000, abs=0.002)
    assert stats.round_trips == 2
    assert stats.window_s is None and q.enqueued_per_s is None and q.error_rate is None
    # JSON-serialisable, and back.
    decoded = msgspec.json.decode(msgspec.json.encode(stats), type=Stats)
    assert decoded == stats
    assert json.loads(json.dumps(stats.to_dict()))["queues"][0]["lag"] == 6


async def test_stats_of_an_empty_prefix_and_of_named_queues(
    mq: LeanMQ, orders: tuple[Queue, Queue]
) -> None:
    async with LeanMQ(client=mq.redis, prefix=mq.prefix + "empty:") as other:
        empty = await collect_stats(other)
    assert empty.queues == [] and empty.round_trips == 2
    await orders[0].send_message(1)
    await mq.create_queue_pair("other")
    named = await collect_stats(mq, ["orders:dlq", "orders"])
    assert [q.name for q in named.queues] == ["orders"]
    assert named.round_trips == 1  # no registry read
    with pytest.raises(ConfigurationError):
        await collect_stats(mq, ["bad name"])


async def test_lag_counted_when_redis_reports_none(
    mq: LeanMQ, raw: aioredis.Redis, orders: tuple[Queue, Queue]
) -> None:
    queue, _ = orders
    ids = await queue.send_messages(range(6))
    await queue.get_messages(count=2)
    # Delete an entry after the group's last-delivered id: Redis no longer knows the lag.
    await raw.xdel(queue.stream, ids[4])
    (info,) = await raw.xinfo_groups(queue.stream)
    assert info["lag"] is None
    stats = await collect_stats(mq)
    q = stats.queue("orders")
    assert q.lag == 3 and q.groups[0].lag_exact
    assert q.backlog == 5
    assert stats.round_trips == 3
    # A cap makes the count a floor.
    capped = (await collect_stats(mq, lag_count_cap=2)).queue("orders")
    assert capped.lag == 2 and not capped.groups[0].lag_exact


async def test_lag_derived_without_counting(
    mq: LeanMQ, raw: aioredis.Redis, orders: tuple[Queue, Queue]
) -> None:
    queue, _ = orders
    ids = await queue.send_messages(range(5))
    await raw.xdel(queue.stream, ids[1])  # nothing delivered yet: the lag is the length
    stats = await collect_stats(mq)
    assert stats.queue("orders").lag == 4
    assert stats.round_trips == 2
    await queue.get_messages(count=10)
    stats = await collect_stats(mq)
    assert stats.queue("orders").lag == 0  # everything delivered
    assert stats.round_trips == 2


async def test_several_groups_and_consumers(
    mq: LeanMQ, raw: aioredis.Redis, orders: tuple[Queue, Queue]
) -> None:
    queue, _ = orders
    await queue.send_messages(range(10))
    await raw.xgroup_create(queue.stream, "audit", id="0")
    await queue.get_messages(count=3, consumer_id="a")
    await queue.get_messages(count=2, consumer_id="b")
    await raw.xreadgroup("audit", "x", {queue.stream: ">"}, count=1)
    q = (await collect_stats(mq)).queue("orders")
    groups = {g.name: g for g in q.groups}
    assert set(groups) == {"orders-group", "audit"}
    assert (groups["orders-group"].pending, groups["orders-group"].lag) == (5, 5)
    assert (groups["audit"].pending, groups["audit"].lag) == (1, 9)
    assert {c.name: c.pending for c in groups["orders-group"].consumers} == {"a": 3, "b": 2}
    assert q.pending == 6  # summed
    assert q.lag == 9  # the worst group
    assert q.backlog == 10
    assert q.consumers == 3


async def test_deleted_main_queue_and_wrong_key_type(
    mq: LeanMQ, raw: aioredis.Redis, orders: tuple[Queue, Queue]
) -> None:
    queue, _ = orders
    await queue.send_message(1)
    (msg,) = await queue.get_messages()
    await queue.move_to_dlq([msg.id], "x")
    await mq.delete_queue("orders", delete_dlq=False)
    broken, _ = await mq.create_queue_pair("broken")
    await raw.set(broken.keys.delayed, "not a zset")
    stats = await collect_stats(mq)
    gone = stats.queue("orders")
    assert not gone.exists and gone.length == 0 and gone.dlq_length == 1
    bad = stats.queue("broken")
    assert bad.error is not None and "WRONGTYPE" in bad.error
    report = await check_health(mq, HealthThresholds(dlq_warning=5))
    assert report.queues["broken"] == "critical"
    assert report.queues["orders"] == "ok"
    assert any(i.check == "error" and i.queue == "broken" for i in report.issues)


async def test_sampler_rates(mq: LeanMQ, orders: tuple[Queue, Queue]) -> None:
    queue, _ = orders
    sampler = StatsSampler(mq)
    first = await sampler.collect()
    assert first.window_s is None and first.queue("orders").enqueued_per_s is None
    await queue.send_messages(range(10))
    msgs = await queue.get_messages(count=6)
    await queue.acknowledge_messages([m.id for m in msgs[:4]])
    await queue.move_to_dlq([m.id for m in msgs[4:]], "failed")
    await anyio.sleep(0.01)  # so the Redis clock moves between the samples
    second = await sampler.collect()
    q = second.queue("orders")
    window = second.window_s
    assert window == pytest.approx(second.collected_at - first.collected_at)
    assert window is not None and window > 0
    assert q.enqueued_per_s == pytest.approx(10 / window, rel=1e-3, abs=1e-3)
    assert q.processed_per_s == pytest.approx(6 / window, rel=1e-3, abs=1e-3)
    assert q.dead_lettered_per_s == pytest.approx(2 / window, rel=1e-3, abs=1e-3)
    assert q.error_rate == pytest.approx(2 / 6, abs=1e-3)
    # A purge resets the stream's counters: no rate rather than a negative one.
    await queue.purge()
    third = await sampler.collect()
    assert third.queue("orders").enqueued_per_s is None
    assert third.queue("orders").processed_per_s is None
    assert third.queue("orders").error_rate is None
    assert third.queue("orders").dead_lettered_per_s is not None  # the DLQ was not purged
    assert "samples=3" in repr(sampler)


def fake(t: float, added: int) -> Stats:
    q = QueueStats(name="q", entries_added=added)
    return Stats(prefix="p:", collected_at=t, queues=[q], round_trips=0)


async def test_sampler_window(mq: LeanMQ) -> None:
    sampler = StatsSampler(mq, window=30)
    sampler.observe(fake(0, 0))
    sampler.observe(fake(10, 100))
    s = sampler.observe(fake(20, 300))
    assert s.window_s == 20 and s.queues[0].enqueued_per_s == 15  # against t=0
    s = sampler.observe(fake(100, 1100))  # every sample older than the window
    assert s.window_s == 80 and s.queues[0].enqueued_per_s == 10  # against t=20, the newest
    s = sampler.observe(fake(110, 1200))
    assert s.window_s == 10 and s.queues[0].enqueued_per_s == 10
    with pytest.raises(ValueError, match="window"):
        StatsSampler(mq, window=0)


# -- round trips ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


class Meter:
    """Round trips (packed writes) and the server's per-command calls during a call."""

    def __init__(self, admin: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.admin = admin
        self.trips = 0
        original = AbstractConnection.send_packed_command

        async def counting(conn: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            self.trips += 1
            await original(conn, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    async def _calls(self) -> dict[str, int]:
        info = await self.admin.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    async def measure(self, call: Callable[[], Awaitable[Any]]) -> tuple[int, dict[str, int]]:
        before = await self._calls()
        self.trips = 0
        await call()
        trips = self.trips
        after = await self._calls()
        delta = {k: v - before.get(k, 0) for k, v in after.items()}
        delta["info"] -= 1
        return trips, {k: v for k, v in delta.items() if v}


@pytest.fixture
async def pmq(private_server: RedisServer, prefix: str) -> AsyncIterator[LeanMQ]:
    async with LeanMQ(private_server.url, prefix=prefix) as client:
        await client.health()
        yield client


@pytest.fixture
async def meter(
    private_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Meter]:
    admin = aioredis.Redis.from_url(private_server.url)
    await admin.ping()
    yield Meter(admin, monkeypatch)
    await admin.aclose()


@pytest.mark.parametrize("n_queues", [1, 50])
async def test_stats_round_trips_do_not_grow_with_queues(
    pmq: LeanMQ, meter: Meter, n_queues: int
) -> None:
    for i in range(n_queues):
        queue, _ = await pmq.create_queue_pair(f"q{i}")
        await queue.send_messages(range(3))
        (msg,) = await queue.get_messages()
        await queue.move_to_dlq([msg.id], "x")
    stats: list[Stats] = []

    async def run() -> None:
        stats.append(await collect_stats(pmq))

    trips, calls = await meter.measure(run)
    assert len(stats[0].queues) == n_queues
    assert trips == 2 == stats[0].round_trips
    assert calls == {
        "smembers": 2,  # the registry, and its old key during the transition (same trip)
        "xinfo|stream": 2 * n_queues,
        "zcard": 3 * n_queues,  # the delayed sets of the queue and of 2 priority levels
        "xlen": 2 * n_queues,  # the 2 priority levels' streams
        "xinfo|groups": 2 * n_queues,
        "hgetall": n_queues,
        "time": 1,
    }
    # Health is the same collection, one INFO memory (memory pressure), plus arithmetic.
    trips, _ = await meter.measure(lambda: check_health(pmq))
    assert trips == 3


async def test_stats_round_trips_with_counted_lags(
    pmq: LeanMQ, meter: Meter, private_server: RedisServer
) -> None:
    admin = aioredis.Redis.from_url(private_server.url)
    for i in range(50):
        queue, _ = await pmq.create_queue_pair(f"c{i}")
        ids = await queue.send_messages(range(4))
        await queue.get_messages()
        await admin.xdel(queue.stream, ids[2])
    await admin.aclose()
    trips, calls = await meter.measure(lambda: collect_stats(pmq))
    assert trips == 3
    assert calls["eval"] == 50  # one small counting script per group, in one pipeline


# -- health -------------------------------------------------------------------------------

SMALL = HealthThresholds(backlog_warning=3, backlog_critical=8, dlq_warning=0, dlq_critical=2)


async def test_health_levels(mq: LeanMQ, orders: tuple[Queue, Queue]) -> None:
    queue, _ = orders
    report = await check_health(mq, SMALL)
    assert (report.status, report.redis, report.exit_code) == ("ok", True, 0)
    assert report.queues == {"<redis>": "ok", "orders": "ok"}
    assert report.issues == []

    await queue.send_messages(range(4))  # backlog 4 > 3
    report = await check_health(mq, SMALL)
    assert (report.status, report.exit_code) == ("warning", 1)
    (issue,) = report.issues
    assert (issue.queue, issue.check, issue.level, issue.value, issue.threshold) == (
        "orders",
        "backlog",
        "warning",
        4,
        3,
    )
    assert "orders" in issue.message

    msgs = await queue.get_messages(count=3)
    await queue.move_to_dlq([m.id for m in msgs], "boom")  # DLQ 3 > 2, backlog 1
    report = await check_health(mq, SMALL)
    assert (report.status, report.exit_code) == ("critical", 2)
    assert [(i.check, i.level) for i in report.issues] == [("dlq", "critical")]

    # Defaults are the guide's: > 1,000 / > 5,000 backlog, > 10 / > 100 DLQ.
    default = await check_health(mq)
    assert default.status == "ok"
    assert default.thresholds == HealthThresholds(
        backlog_warning=1000, backlog_critical=5000, dlq_warning=10, dlq_critical=100
    )
    # Redis's own pending count and the oldest pending age have opt-in thresholds.
    await queue.send_messages(range(3))
    await queue.get_messages(count=3)
    report = await check_health(
        mq, HealthThresholds(pending_warning=2, oldest_pending_critical_s=0)
    )
    checks = {(i.check, i.level) for i in report.issues}
    assert ("pending", "warning") in checks
    assert ("oldest_pending", "critical") in checks
    assert report.status == "critical"
    assert msgspec.json.decode(msgspec.json.encode(report))["status"] == "critical"


async def test_thresholds_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="above the critical"):
        HealthThresholds(dlq_warning=10, dlq_critical=5)
    with pytest.raises(ConfigurationError, match=">= 0"):
        HealthThresholds(backlog_warning=-1)


async def test_unreachable_redis_is_critical() -> None:
    async with LeanMQ(f"redis://127.0.0.1:{free_port()}/0", prefix="x:") as down:
        report = await check_health(down)
    assert (report.status, report.redis, report.exit_code) == ("critical", False, 2)
    assert report.error and report.checked_at is None
    assert report.issues[0].check == "redis"


async def test_watcher_calls_hooks_on_level_changes(
    mq: LeanMQ, orders: tuple[Queue, Queue]
) -> None:
    queue, _ = orders
    seen_sync: list[AlertEvent] = []
    seen_async: list[tuple[str, str, str]] = []

    def broken(event: AlertEvent) -> None:
        raise RuntimeError("hook bug")

    async def notify(event: AlertEvent) -> None:
        await anyio.lowlevel.checkpoint()
        seen_async.append((event.queue, event.previous, event.current))

    watcher = HealthWatcher(mq, [broken, seen_sync.append, notify], interval=30, thresholds=SMALL)
    assert await watcher.check_once() == []  # all ok: nothing to say
    await queue.send_messages(range(4))
    (event,) = await watcher.check_once()
    assert (event.queue, event.previous, event.current, event.escalated) == (
        "orders",
        "ok",
        "warning",
        True,
    )
    assert [i.check for i in event.issues] == ["backlog"]
    assert await watcher.check_once() == []  # still warning: no new alert
    await queue.send_messages(range(5))
    assert [(e.previous, e.current) for e in await watcher.check_once()] == [
        ("warning", "critical")
    ]
    await queue.purge()
    (event,) = await watcher.check_once()
    assert (event.current, event.escalated, event.issues) == ("ok", False, [])
    assert seen_async == [
        ("orders", "ok", "warning"),
        ("orders", "warning", "critical"),
        ("orders", "critical", "ok"),
    ]
    assert [e.current for e in seen_sync] == ["warning", "critical", "ok"]  # after `broken`
    assert "interval=30s hooks=3" in repr(watcher)


async def test_watcher_runs_as_a_task_and_reports_redis_down() -> None:
    server = RedisServer().start()
    try:
        async with LeanMQ(server.url, prefix="w:") as client:
            queue, _ = await client.create_queue_pair("jobs")
            await queue.send_messages(range(5))
            events: list[AlertEvent] = []
            watcher = HealthWatcher(client, [events.append], interval=0.01, thresholds=SMALL)
            await watcher.run(iterations=2)
            assert [(e.queue, e.current) for e in events] == [("jobs", "warning")]
            server.kill()
            await watcher.check_once()
            assert [(e.queue, e.previous, e.current) for e in events[1:]] == [
                ("<redis>", "ok", "critical")
            ]
            assert watcher.levels["jobs"] == "warning"  # unknown while Redis is down: kept
            async with anyio.create_task_group() as tg:
                await tg.start(watcher.run)
                tg.cancel_scope.cancel()
    finally:
        server.close()
    with pytest.raises(ConfigurationError):
        HealthWatcher(client, interval=0)


# -- DLQ tools ----------------------------------------------------------------------------


async def dead_letters(queue: Queue, n: int, reason: str = "boom") -> list[str]:
    await queue.send_messages([{"n": i} for i in range(n)])
    msgs = await queue.get_messages(count=n)
    await queue.move_to_dlq([m.id for m in msgs], reason)
    return [m.id for m in await queue.dead_letter_queue().peek_messages(n)]


async def test_list_and_show_do_not_consume(mq: LeanMQ, orders: tuple[Queue, Queue]) -> None:
    queue, dlq = orders
    ids = await dead_letters(queue, 3, "invalid foreign key")
    listed = await list_dead_letters(mq, "orders")
    assert [m.id for m in listed] == ids
    assert listed[0].data == {"n": 0}
    assert listed[0].dead_letter is not None
    assert listed[0].dead_letter.reason == "invalid foreign key"
    assert [m.id for m in await list_dead_letters(mq, "orders:dlq", count=2, start=ids[1])] == ids[
        1:
    ]
    shown = await get_dead_letter(mq, "orders", ids[2])
    assert shown is not None and shown.data == {"n": 2}
    assert await get_dead_letter(mq, "orders", "1-0") is None
    info = await dlq.get_info()
    assert (info.message_count, info.pending_messages) == (3, 0)  # nothing consumed
    with pytest.raises(InvalidMessageIdError):
        await get_dead_letter(mq, "orders", "nope")
    with pytest.raises(QueueNotFoundError):
        await list_dead_letters(mq, "missing")
    with pytest.raises(ConfigurationError):
        await list_dead_letters(mq, "orders", count=0)


async def test_requeue_selected_ids_with_dry_run(
    mq: LeanMQ, raw: aioredis.Redis, orders: tuple[Queue, Queue]
) -> None:
    queue, dlq = orders
    ids = await dead_letters(queue, 4)
    # A tombstone: a message lost before it was dead-lettered has nothing to requeue.
    await raw.xadd(dlq.stream, {"dlq.missing": "1", "dlq.reason": "lost"})
    tomb = (await dlq.peek_messages(10))[-1].id
    wanted = [ids[0], ids[2], tomb, "1-0", ids[0]]
    dry = await requeue_dead_letters(mq, "orders", wanted, dry_run=True)
    assert dry.dry_run and dry.requeued == [ids[0], ids[2]] and dry.count == 2
    assert [(s.id, s.reason.split(":")[0]) for s in dry.skipped] == [
        (tomb, "tombstone"),
        ("1-0", "not in the dead-letter queue"),
    ]
    assert (await dlq.get_info()).message_count == 5  # nothing moved
    real = await requeue_dead_letters(mq, "orders", wanted)
    assert not real.dry_run and real.requeued == dry.requeued and real.skipped == dry.skipped
    assert [m.id for m in await dlq.peek_messages(10)] == [ids[1], ids[3], tomb]
    back = await queue.get_messages(count=10)
    assert [m.data for m in back] == [{"n": 0}, {"n": 2}]
    with pytest.raises(ConfigurationError, match="either"):
        await requeue_dead_letters(mq, "orders")
    with pytest.raises(ConfigurationError, match="either"):
        await requeue_dead_letters(mq, "orders", ["1-0"], all_messages=True)


async def test_requeue_all_pages_through_the_dlq(mq: LeanMQ, orders: tuple[Queue, Queue]) -> None:
    queue, dlq = orders
    ids = await dead_letters(queue, 1203)
    dry = await requeue_dead_letters(mq, "orders", all_messages=True, dry_run=True)
    assert dry.requeued == ids and dry.count == 1203
    assert (await dlq.get_info()).message_count == 1203
    real = await requeue_dead_letters(mq, "orders", all_messages=True)
    assert real.requeued == ids and real.skipped == []
    assert (await dlq.get_info()).message_count == 0
    assert len(await queue.get_messages(count=2000)) == 1203


async def test_purge_needs_confirm(mq: LeanMQ, orders: tuple[Queue, Queue]) -> None:
    queue, dlq = orders
    await dead_letters(queue, 3)
    with pytest.raises(ConfirmationRequiredError, match="confirm=True"):
        await purge_dead_letters(mq, "orders")
    assert (await dlq.get_info()).message_count == 3
    report = await purge_dead_letters(mq, "orders", confirm=True)
    assert (report.queue, report.purged) == ("orders", 3)
    info = await dlq.get_info()
    assert info.message_count == 0 and info.consumer_groups == ("orders-group-dlq",)


async def test_clear_queue(mq: LeanMQ, orders: tuple[Queue, Queue]) -> None:
    queue, dlq = orders
    await make_states(queue)  # 10 in the stream (2 pending), 2 delayed, 1 dead letter
    with pytest.raises(ConfirmationRequiredError):
        await clear_queue(mq, "orders")
    report = await clear_queue(mq, "orders", confirm=True)
    assert (report.messages, report.delayed, report.dead_letters) == (10, 2, None)
    info = await queue.get_info()
    assert (info.message_count, info.pending_messages, info.delayed_messages) == (0, 0, 0)
    assert (await dlq.get_info()).message_count == 1  # kept
    await queue.send_message("after")  # the group survived
    assert [m.data for m in await queue.get_messages()] == ["after"]
    report = await clear_queue(mq, "orders", include_dlq=True, confirm=True)
    assert (report.messages, report.delayed, report.dead_letters) == (1, 0, 1)
    assert (await dlq.get_info()).message_count == 0
    with pytest.raises(ConfigurationError, match="dead-letter"):
        await clear_queue(mq, "orders:dlq", confirm=True)
    with pytest.raises(QueueNotFoundError):
        await clear_queue(mq, "missing", confirm=True)


async def test_cleanup_removes_only_old_acknowledged_history(
    mq: LeanMQ, raw: aioredis.Redis, orders: tuple[Queue, Queue]
) -> None:
    queue, _ = orders
    redis_now = (await raw.time())[0] * 1000
    old = redis_now - 48 * 3_600_000
    envelope = b'{"id":"x","ts":0,"p":"old"}'
    for i in range(3):  # three messages two days old
        await raw.xadd(queue.stream, {b"j": envelope}, id=f"{old + i}-0")
    await queue.send_messages(range(4))
    msgs = await queue.get_messages(count=6)
    await queue.acknowledge_messages([msgs[0].id, msgs[1].id, msgs[3].id, msgs[4].id])
    # Old and acked: 2 (the third old one is pending). Recent and acked: 2.
    report = await cleanup(mq, 24)
    assert report.trimmed == {"orders": 2} and report.total == 2
    info = await queue.get_info()
    assert (info.message_count, info.pending_messages) == (5, 2)
    # max_age 0 trims all acknowledged history, up to the first pending entry.
    report = await cleanup(mq, 0)
    assert report.total == 0  # the pending old entry is first: nothing before it
    await queue.acknowledge_messages([msgs[2].id])
    report = await cleanup(mq, 0, queues=["orders"])
    assert report.trimmed == {"orders": 3}  # up to the next pending one (msgs[5])
    info = await queue.get_info()
    assert (info.message_count, info.pending_messages) == (2, 1)
    with pytest.raises(ConfigurationError):
        await cleanup(mq, -1)


async def test_force_process_redelivers_stuck_messages(
    mq: LeanMQ, raw: aioredis.Redis, orders: tuple[Queue, Queue]
) -> None:
    queue, _ = orders
    await queue.send_messages([{"n": i} for i in range(3)], ttl=3600)
    stuck = await queue.get_messages(count=3, consumer_id="dead-worker")
    dry = await force_process(mq, "orders", 2, min_idle=0, dry_run=True)
    assert [c.id for c in dry.candidates] == [stuck[0].id, stuck[1].id]
    assert {c.consumer for c in dry.candidates} == {"dead-worker"}
    assert dry.redelivered == [] and dry.dry_run
    assert (await queue.get_info()).pending_messages == 3
    none = await force_process(mq, "orders", 2, min_idle=3600)
    assert none.candidates == [] and none.redelivered == []

    report = await force_process(mq, "orders", 2, min_idle=0)
    assert report.redelivered == [stuck[0].id, stuck[1].id] and report.skipped == []
    pending = await raw.xpending_range(queue.stream, "orders-group", "-", "+", 10)
    assert [p["message_id"] for p in pending] == [stuck[2].id.encode()]
    again = await queue.get_messages(count=10, consumer_id="fresh")
    assert [m.data for m in again] == [{"n": 0}, {"n": 1}]
    assert [m.message_id for m in again] == [stuck[0].message_id, stuck[1].message_id]
    assert all(m.attempt == 1 and m.expires_at is not None for m in again)
    consumers = {c["name"] for c in await raw.xinfo_consumers(queue.stream, "orders-group")}
    assert not any(name.startswith(b"leanmq-admin:") for name in consumers)
    with pytest.raises(ConfigurationError):
        await force_process(mq, "orders", 0)
    with pytest.raises(ConfigurationError):
        await force_process(mq, "orders", 1, min_idle=-1)
