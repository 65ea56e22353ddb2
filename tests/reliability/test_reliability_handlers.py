"""Handlers that misbehave: slower than their lease, never returning, always failing, and
workers cancelled at random points while messages flow. Cases 7, 8, 9 and 16 of the
reliability suite."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import Message, Reject, Retry
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


def no_wait(_: int) -> float:
    return 0.01


# -- case 7 ------------------------------------------------------------------------------


async def test_case07_handler_slower_than_its_lease_runs_once(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger
) -> None:
    lease = 1.5
    options: dict[str, Any] = {"concurrency": 10, "visibility_timeout": lease, "sleep": 3 * lease}
    mq1, queue = ledger_client(redis_server.url, prefix, ledger, consumer="c7-a", **options)
    mq2, _ = ledger_client(redis_server.url, prefix, ledger, consumer="c7-b", **options)
    producer = Producer(queue, "c7")
    async with mq1, mq2:
        with capture_events() as events:
            async with mq1.worker(**FAST) as w1, mq2.worker(**FAST) as w2:
                await producer.send(20)
                confirmed = set(producer.confirmed)
                await wait_until(lambda: confirmed <= set(ledger.counts()), within=30,
                                 what="all handled")  # fmt: skip
                await anyio.sleep(lease)  # a lease more: would anyone take one again?
                await wait_until(lambda: settled(raw, queue), what="acks")
        await assert_settled(raw, queue)
    starts = ledger.counts("start")
    rep = check(7, producer.confirmed, ledger)
    report(
        rep,
        lease=lease,
        handler_seconds=3 * lease,
        started_twice=sum(1 for n in starts.values() if n > 1),
        reclaimed=w1.stats.reclaimed + w2.stats.reclaimed,
        lease_lost_logs=events.count("lease_lost"),
    )
    assert set(starts.values()) == {1}  # never started twice, on either worker
    assert not rep.duplicated
    assert w1.stats.reclaimed + w2.stats.reclaimed == 0
    assert w1.stats.handled and w2.stats.handled  # both took part


# -- case 8 ------------------------------------------------------------------------------


async def test_case08_handler_that_never_returns(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger
) -> None:
    stuck = "c8-stuck"

    async def behave(message: Message[dict[str, Any]]) -> None:
        if message.data["mid"] == stuck:
            await anyio.sleep_forever()
        await anyio.sleep(0.005)

    mq, queue = ledger_client(
        redis_server.url, prefix, ledger, behaviour=behave,
        concurrency=1, timeout=0.3, max_retries=2, backoff=no_wait,
    )  # fmt: skip
    producer = Producer(queue, "c8")
    async with mq, mq.worker(**FAST) as worker:
        await producer.send_one(stuck)
        await producer.send(20)
        await wait_until(lambda: worker.stats.dead_lettered == 1, within=30, what="DLQ")
        others = set(producer.confirmed) - {stuck}
        await wait_until(lambda: others <= set(ledger.counts()), what="the others")
        await wait_until(lambda: settled(raw, queue), what="acks")
        assert worker.runners[0].in_flight == 0  # the slot was freed every time
    await assert_settled(raw, queue)
    ((_, fields),) = await dlq_entries(raw, queue)
    attempts = [e for e in ledger.events("start") if e["mid"] == stuck]
    rep = check(8, others, ledger)
    report(rep, stuck_attempts=len(attempts), dlq=1, retried=worker.stats.retried)
    assert [e["att"] for e in attempts] == [1, 2, 3]
    assert fields[b"dlq.error"] == b"TimeoutError"
    assert b"exceeded its timeout of 0.3s" in fields[b"dlq.reason"]
    assert fields[b"dlq.attempts"] == b"3"
    assert stuck not in ledger.counts()  # never "done"
    assert not rep.duplicated


# -- case 9 ------------------------------------------------------------------------------


async def test_case09_poison_message(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger
) -> None:
    poison = "c9-poison"
    max_retries = 3

    async def behave(message: Message[dict[str, Any]]) -> None:
        if message.data["mid"] == poison:
            raise ValueError("poisoned")

    mq, queue = ledger_client(
        redis_server.url, prefix, ledger, behaviour=behave,
        concurrency=50, max_retries=max_retries, backoff=no_wait,
    )  # fmt: skip
    producer = Producer(queue, "c9")
    await producer.send(500)
    await producer.send_one(poison)
    await producer.send(499)
    others = set(producer.confirmed) - {poison}
    async with mq, mq.worker(**FAST) as worker:
        await wait_until(lambda: others <= set(ledger.counts()), within=60, what="999 handled")
        await wait_until(lambda: worker.stats.dead_lettered == 1, within=30, what="poison DLQ")
        await wait_until(lambda: settled(raw, queue), what="acks")
    await assert_settled(raw, queue)
    attempts = [e for e in ledger.events("start") if e["mid"] == poison]
    dead = await dlq_entries(raw, queue)
    rep = check(9, others, ledger)
    report(rep, poison_attempts=len(attempts), dlq=len(dead))
    assert [e["att"] for e in attempts] == list(range(1, max_retries + 2))
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"dlq.attempts"] == str(max_retries + 1).encode()
    assert fields[b"dlq.error"] == b"ValueError"
    assert b"poisoned" in fields[b"dlq.reason"]
    assert not rep.duplicated  # the other 999: exactly once each
    assert worker.stats.retried == max_retries


# -- case 16 -----------------------------------------------------------------------------


def kind(mid: str) -> str:
    n = int(mid.rsplit("-", 1)[1])
    if n % 7 == 0:
        return "reject"
    if n % 5 == 0:
        return "retry"
    return "ok"


async def test_case16_cancelled_at_random_points_while_messages_flow(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis, ledger: Ledger
) -> None:
    rng = random.Random(16)
    iterations = 30

    async def behave(message: Message[dict[str, Any]]) -> None:
        mid = message.data["mid"]
        await anyio.sleep(random.uniform(0, 0.04))
        if kind(mid) == "reject":
            ledger.record(mid, "reject", sid=message.id)
            raise Reject("rejected")
        if kind(mid) == "retry" and message.attempt == 1:
            ledger.record(mid, "retry", sid=message.id)
            raise Retry(delay=0.01)

    options: dict[str, Any] = {
        "behaviour": behave,
        "concurrency": 8,
        "visibility_timeout": 0.3,
        "max_retries": 3,
        "backoff": no_wait,
    }
    probe, queue = ledger_client(redis_server.url, prefix, ledger, consumer="c16-probe", **options)
    producer = Producer(queue, "c16")
    cut_at: list[float] = []
    async with probe:
        for i in range(iterations):
            await producer.send(40)
            mq, _ = ledger_client(redis_server.url, prefix, ledger, consumer=f"c16-{i % 3}",
                                  **options)  # fmt: skip
            async with mq:
                delay = rng.uniform(0.0, 0.3)
                cut_at.append(delay)
                grace = rng.choice([0.0, 0.0, 0.005, 0.02, 0.1])
                with anyio.move_on_after(delay):
                    await mq.run_worker(
                        block_ms=50, maintenance_interval=0.01, grace_period=grace,
                        settle_timeout=5.0,
                    )  # fmt: skip
        # Whatever is left (pending with the three names, scheduled retries) is finished
        # by one more worker.
        final, _ = ledger_client(redis_server.url, prefix, ledger, consumer="c16-final",
                                 **options)  # fmt: skip
        oks = {m for m in producer.confirmed if kind(m) != "reject"}
        rejects = {m for m in producer.confirmed if kind(m) == "reject"}
        async with final, final.worker(**FAST) as worker:
            await wait_until(lambda: oks <= set(ledger.counts()), within=60, what="all handled")
            await wait_until(lambda: _dlq_mids(raw, queue, rejects), within=30, what="rejects")
            await wait_until(lambda: settled(raw, queue), within=30, what="acks")
            assert worker.stats.handled >= 0
        await assert_settled(raw, queue)

    dead = await dlq_entries(raw, queue)
    sid_to_mid = {e["sid"]: e["mid"] for e in ledger.events() if "sid" in e}
    dlq_mids = Counter(sid_to_mid.get(f[b"dlq.id"].decode(), "?") for _, f in dead)
    dlq_sids = Counter(f[b"dlq.id"] for _, f in dead)
    done = set(ledger.counts())
    ended = Counter(e["sid"] for e in ledger.events() if e["ev"] != "start")
    interrupted = sum(
        n - ended[sid] for sid, n in Counter(e["sid"] for e in ledger.events("start")).items()
    )
    rep = check(16, oks, ledger)
    report(
        rep,
        iterations=iterations,
        interrupted_runs=interrupted,
        dead_lettered=len(dead),
        handler_runs=len(ledger.events("start")),
        retries=len(ledger.events("retry")),
    )
    assert set(dlq_mids) == rejects  # every rejected message once in the DLQ, nothing else
    assert set(dlq_mids.values()) == {1}
    assert set(dlq_sids.values()) == {1}
    assert not (done & rejects)  # a dead-lettered message was never also handled


async def _dlq_mids(raw: aioredis.Redis, queue: Any, want: set[str]) -> bool:
    return len(await dlq_entries(raw, queue)) >= len(want)
