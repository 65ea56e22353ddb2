"""Worker processes that die: SIGKILL under load, a crash between success and ack, a
restart under the same name, a message that kills every worker, SIGTERM and a second
signal. Cases 1, 2, 3, 10 and 17 of the reliability suite."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Queue
from leanmq_async.testing import RedisServer
from tests.reliability.harness import (
    Apps,
    Ledger,
    Producer,
    app_env,
    assert_settled,
    check,
    consumer_pending,
    dlq_entries,
    pending_ids,
    report,
    settled,
    wait_until,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def work(mq: LeanMQ) -> AsyncIterator[Queue]:
    yield mq.queue("work")


def env_for(server: RedisServer, prefix: str, ledger: Ledger, **extra: Any) -> dict[str, str]:
    return app_env(server.url, prefix, APP_LEDGER=ledger.path, **extra)


async def all_done(ledger: Ledger, mids: set[str]) -> bool:
    return mids <= set(ledger.counts())


# -- case 1 ------------------------------------------------------------------------------


async def sigkill_under_load(
    total: int,
    redis_server: RedisServer,
    prefix: str,
    work: Queue,
    raw: aioredis.Redis,
    ledger: Ledger,
    apps: Apps,
) -> None:
    producer = Producer(work, "c1")
    await producer.send(total)
    concurrency = 256
    env = env_for(
        redis_server,
        prefix,
        ledger,
        APP_CONSUMER="c1-a",
        APP_CONCURRENCY=concurrency,
        APP_LEASE=2,
        APP_SLEEP=0.5,
        APP_JITTER=0.8,
    )
    a = apps.start("ledger_app", env, "worker-a")
    await wait_until(
        lambda: len(ledger.in_flight(a.pid)) >= 200 and len(ledger.counts()) >= 300,
        within=60,
        interval=0.05,
        what="200 handlers in flight in worker A",
    )
    a.send_signal(signal.SIGKILL)
    assert await apps.wait_exit(a, 10) == -signal.SIGKILL
    in_flight = len(ledger.in_flight(a.pid))
    held = (await consumer_pending(raw, work)).get("c1-a", 0)
    done_by_a = len({e["mid"] for e in ledger.events("done") if e["pid"] == a.pid})
    assert in_flight >= 200
    # Held by A: its handlers in flight, plus messages read but not started and handled
    # messages whose batched ack was not written yet (the only ones that can run twice).
    held_not_running = held - in_flight
    assert held_not_running >= 0

    b_env = {**env, "APP_CONSUMER": "c1-b", "APP_CONCURRENCY": "100", "APP_SLEEP": "0.002"}
    b = apps.start("ledger_app", b_env, "worker-b")
    confirmed = set(producer.confirmed)
    await wait_until(
        lambda: all_done(ledger, confirmed), within=120, interval=0.2, what="all handled"
    )
    await wait_until(lambda: settled(raw, work), within=30, what="worker B's acks")
    assert b.poll() is None, apps.log_of(b)
    await assert_settled(raw, work)
    rep = check(1, confirmed, ledger)
    report(rep, in_flight_at_kill=in_flight, held_not_running=held_not_running, done_by_a=done_by_a)
    # Only what the dead worker handled without acknowledging it can run twice.
    assert rep.duplicates <= held_not_running
    assert rep.duplicates <= in_flight
    assert set(rep.duplicated.values()) <= {2}
    assert set(rep.duplicated) <= {e["mid"] for e in ledger.events("done") if e["pid"] == a.pid}


async def test_case01_sigkill_with_200_handlers_in_flight(
    redis_server: RedisServer,
    prefix: str,
    work: Queue,
    raw: aioredis.Redis,
    ledger: Ledger,
    apps: Apps,
) -> None:
    await sigkill_under_load(2_000, redis_server, prefix, work, raw, ledger, apps)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_case01_sigkill_with_200_handlers_in_flight_full(
    redis_server: RedisServer,
    prefix: str,
    work: Queue,
    raw: aioredis.Redis,
    ledger: Ledger,
    apps: Apps,
) -> None:
    await sigkill_under_load(10_000, redis_server, prefix, work, raw, ledger, apps)


# -- case 2 ------------------------------------------------------------------------------


async def test_case02_crash_between_success_and_ack(
    redis_server: RedisServer,
    prefix: str,
    work: Queue,
    raw: aioredis.Redis,
    ledger: Ledger,
    apps: Apps,
) -> None:
    producer = Producer(work, "c2")
    mids = await producer.send(40)
    victim = mids[20]
    env = env_for(
        redis_server,
        prefix,
        ledger,
        APP_CONSUMER="c2-a",
        APP_CONCURRENCY=1,
        APP_LEASE=1,
        APP_CRASH_MID=victim,
    )
    a = apps.start("ledger_app", env, "worker-a")
    assert await apps.wait_exit(a, 30) == 3, apps.log_of(a)
    assert ledger.counts()[victim] == 1  # recorded as done, then the process died
    # Held by the dead worker: the victim, and the few handled just before it whose
    # batched acks were not written yet.
    held = set(await pending_ids(raw, work, "c2-a"))
    sid_to_mid = {sid: mid for mid, sid in producer.confirmed.items()}
    assert producer.confirmed[victim] in held
    assert all(ledger.counts()[sid_to_mid[sid]] == 1 for sid in held)

    b = apps.start("ledger_app", {**env, "APP_CONSUMER": "c2-b", "APP_BURST": "1"}, "worker-b")
    assert await apps.wait_exit(b, 60) == 0, apps.log_of(b)
    await assert_settled(raw, work)
    rep = check(2, producer.confirmed, ledger)
    report(rep, victim_executions=rep.duplicated.get(victim, 1), unacked_at_crash=len(held))
    assert rep.duplicated[victim] == 2  # exactly twice
    # Nothing acknowledged ran again: only what the dead worker held, each exactly twice.
    assert rep.duplicated == {sid_to_mid[sid]: 2 for sid in held}
    again = [e for e in ledger.events("done") if e["mid"] == victim]
    assert [e["who"] for e in again] == ["c2-a", "c2-b"]
    assert [e["dc"] for e in again] == [1, 2]


# -- case 3 ------------------------------------------------------------------------------


async def test_case03_restart_under_the_same_name_takes_its_pending_first(
    redis_server: RedisServer,
    prefix: str,
    work: Queue,
    raw: aioredis.Redis,
    ledger: Ledger,
    apps: Apps,
) -> None:
    producer = Producer(work, "c3")
    await producer.send(30)
    # A long lease: what the restarted worker takes back is its own, not a reclaim.
    env = env_for(
        redis_server,
        prefix,
        ledger,
        APP_CONSUMER="c3-same",
        APP_CONCURRENCY=10,
        APP_LEASE=60,
        APP_SLEEP=3600,
    )
    a = apps.start("ledger_app", env, "worker-a")
    await wait_until(lambda: len(ledger.in_flight(a.pid)) == 10, within=30, what="10 in flight")
    a.send_signal(signal.SIGKILL)
    await apps.wait_exit(a, 10)
    held = await pending_ids(raw, work, "c3-same")
    assert len(held) == 10
    await producer.send(20)  # newer messages, behind the held ones and the unread ones

    again = apps.start(
        "ledger_app",
        {**env, "APP_CONCURRENCY": "4", "APP_SLEEP": "0.01", "APP_BURST": "1"},
        "worker-a-again",
    )
    assert await apps.wait_exit(again, 60) == 0, apps.log_of(again)
    starts = [e for e in ledger.events("start") if e["pid"] == again.pid]
    first = starts[: len(held)]
    assert {e["sid"] for e in first} == set(held)
    assert {e["dc"] for e in first} == {2}
    assert all(e["sid"] not in held for e in starts[len(held) :])
    await assert_settled(raw, work)
    rep = check(3, producer.confirmed, ledger)
    report(rep, own_pending=len(held), recovered_first=len(first))
    assert not rep.duplicated


# -- case 10 -----------------------------------------------------------------------------


async def test_case10_message_that_kills_every_worker_is_dead_lettered(
    redis_server: RedisServer,
    prefix: str,
    work: Queue,
    raw: aioredis.Redis,
    ledger: Ledger,
    apps: Apps,
) -> None:
    producer = Producer(work, "c10")
    (killer,) = await producer.send(1)
    before = await producer.send(20)
    max_deliveries = 3
    env = env_for(
        redis_server,
        prefix,
        ledger,
        APP_CONCURRENCY=1,
        APP_LEASE=1,
        APP_KILL_MID=killer,
        APP_MAX_DELIVERIES=max_deliveries,
    )
    pool = apps.start("ledger_app:mq", env, "pool", cli_args=["--workers", "2"])
    await wait_until(
        lambda: _dead_lettered(raw, work, 1), within=90, interval=0.1, what="the killer in the DLQ"
    )
    ((_, fields),) = await dlq_entries(raw, work)
    assert fields[b"dlq.id"].decode() == producer.confirmed[killer]
    assert fields[b"dlq.error"] == b"MaxDeliveriesExceeded"
    assert b"may crash the worker" in fields[b"dlq.reason"]
    # Each of its deliveries ran the handler and killed a worker; the next one was not run.
    kills = [e for e in ledger.events("start") if e["mid"] == killer]
    assert len(kills) == max_deliveries

    after = await producer.send(50)  # the workers are still up and handle the rest
    normal = set(before) | set(after)
    await wait_until(lambda: all_done(ledger, normal), within=60, what="the others handled")
    await wait_until(lambda: settled(raw, work), within=30, what="acks")
    assert pool.poll() is None, apps.log_of(pool)
    pool.send_signal(signal.SIGTERM)
    assert await apps.wait_exit(pool, 30) == 0, apps.log_of(pool)
    await assert_settled(raw, work)
    died = apps.log_of(pool, 0).count("worker_process_died")
    rep = check(10, normal, ledger)
    report(rep, killer_deliveries=len(kills), worker_deaths=died, dlq=1)
    assert died >= max_deliveries


async def _dead_lettered(raw: aioredis.Redis, queue: Queue, n: int) -> bool:
    return len(await dlq_entries(raw, queue)) >= n


# -- case 17 -----------------------------------------------------------------------------


async def test_case17_sigterm_drains_and_a_second_signal_exits_at_once(
    redis_server: RedisServer,
    prefix: str,
    work: Queue,
    raw: aioredis.Redis,
    ledger: Ledger,
    apps: Apps,
) -> None:
    producer = Producer(work, "c17")
    await producer.send(600)
    grace = 20.0
    env = env_for(
        redis_server,
        prefix,
        ledger,
        APP_CONSUMER="c17-a",
        APP_CONCURRENCY=200,
        APP_LEASE=2,
        APP_SLEEP=2,
    )
    cli = ["--grace-period", str(grace)]

    # 1. SIGTERM with 200 handlers in flight: they finish and are acked; nothing more is read.
    a = apps.start("ledger_app:mq", env, "worker-a", cli_args=cli)
    await wait_until(lambda: len(ledger.in_flight(a.pid)) == 200, within=30, what="200 in flight")
    before = await _group(raw, work)
    started = {e["mid"] for e in ledger.events("start") if e["pid"] == a.pid}
    a.send_signal(signal.SIGTERM)
    assert await apps.wait_exit(a, grace + 5) == 0, apps.log_of(a)
    after = await _group(raw, work)
    assert after["last-delivered-id"] == before["last-delivered-id"]  # no read after it
    assert {e["mid"] for e in ledger.events("start") if e["pid"] == a.pid} == started
    assert {e["mid"] for e in ledger.events("done") if e["pid"] == a.pid} == started
    assert after["pending"] == 0 and after["lag"] == 400
    drained = len(started)

    # 2. Two signals: the second exits at once; what was in flight stays pending.
    b = apps.start(
        "ledger_app:mq",
        {**env, "APP_CONSUMER": "c17-b", "APP_SLEEP": "3600"},
        "worker-b",
        cli_args=cli,
    )
    await wait_until(lambda: len(ledger.in_flight(b.pid)) == 200, within=30, what="200 in flight")
    b.send_signal(signal.SIGTERM)
    await wait_until(lambda: "graceful_stop" in apps.log_of(b, 0), within=10, what="signal")
    b.send_signal(signal.SIGTERM)
    assert await apps.wait_exit(b, 10) == 128 + signal.SIGTERM, apps.log_of(b)
    abandoned = (await consumer_pending(raw, work)).get("c17-b", 0)
    assert abandoned == 200
    assert not [e for e in ledger.events("done") if e["pid"] == b.pid]

    # 3. A later worker handles them after the lease, and the rest.
    c = apps.start(
        "ledger_app",
        {**env, "APP_CONSUMER": "c17-c", "APP_SLEEP": "0", "APP_BURST": "1"},
        "worker-c",
    )
    assert await apps.wait_exit(c, 60) == 0, apps.log_of(c)
    await assert_settled(raw, work)
    rep = check(17, producer.confirmed, ledger)
    report(rep, drained_on_sigterm=drained, left_pending_on_second_signal=abandoned)
    assert not rep.duplicated


async def _group(raw: aioredis.Redis, queue: Queue) -> dict[str, Any]:
    (info,) = list(await raw.xinfo_groups(queue.stream))
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
