"""Rate limits (issue 16 part 2): handler starts limited in Redis across every worker.

The limiter script alone (a strict sliding log on the Redis clock), the executor's step
(start now, or defer with attempts unchanged, holding the reservation), a failing key
function, per-key limits beside unlimited traffic, partitions, and two worker processes
sharing one limit of 50 starts per second over 300 messages.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import ConfigurationError, LeanMQ, Message, RateLimit
from leanmq_async.rate_limit import granted_start
from leanmq_async.testing import RedisServer
from leanmq_async.worker.limiter import FIELD_RESERVED
from leanmq_async.worker.runner import HandlerRunner
from leanmq_async.worker.state import Work
from tests.cluster_fixtures import scmq, small_cluster
from tests.worker_apps.common import (
    app_env,
    list_items,
    log_tail,
    read_as,
    settled,
    start_app,
    wait_until,
)

__all__ = ["scmq", "small_cluster"]  # fixtures, imported for pytest

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


def most_in_any_window(times_ms: list[int], window_ms: int) -> int:
    """The most of ``times_ms`` in any half-open window [a, a + window_ms)."""
    times = sorted(times_ms)
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_ms:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


def test_most_in_any_window() -> None:
    assert most_in_any_window([0, 999, 1000, 1999], 1000) == 2
    assert most_in_any_window([0, 0, 0, 1000], 1000) == 3


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        ((0,), {}, "limit=0"),
        ((1.5,), {}, "limit=1.5"),
        ((True,), {}, "limit=True"),
        ((10**6,), {}, "from 1 to"),
        ((10,), {"per": 0}, "per=0"),
        ((10,), {"per": float("nan")}, "per=nan"),
        ((10,), {"per": "1"}, "per='1'"),
        ((10,), {"key": "customer"}, "key='customer'"),
    ],
)
def test_bad_rate_limits_are_refused_with_what_to_do(
    args: tuple[Any, ...], kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match="RateLimit") as info:
        RateLimit(*args, **kwargs)
    assert says in str(info.value)


async def test_rate_limit_option_must_be_a_rate_limit(mq: LeanMQ) -> None:
    queue = mq.queue("q")
    with pytest.raises(ConfigurationError, match="rate_limit=50 is invalid: use RateLimit"):

        @queue.handler(rate_limit=cast(Any, 50))
        async def handle(data: Any) -> None: ...


# -- the limiter script ----------------------------------------------------------------------


async def test_the_limiter_grants_a_strict_sliding_window(mq: LeanMQ) -> None:
    """3 per 10 s: three starts now, then each next one exactly 10 s after the third last;
    every grant is later than the last (no window of 10 s holds more than 3)."""
    store, log = mq.store, mq.queue("q").keys.rate_limit("g")

    async def ask() -> int:
        (granted,) = await store.rate_limit([log], [1], 3, 10_000, 0)
        return granted

    now = [await ask() for _ in range(3)]
    assert all(g < 0 for g in now)
    starts = [-g for g in now]
    later = [await ask() for _ in range(4)]
    assert later == [starts[0] + 10_000, starts[1] + 10_000, starts[2] + 10_000, starts[0] + 20_000]
    assert most_in_any_window(starts + later, 10_000) == 3
    assert await store.client.llen(log) == 3  # the log keeps the last `limit` grants
    assert 0 < await store.client.pttl(log) <= 40_000
    store.clock_shift_ms = 60_000  # a minute later: free again
    assert await ask() < 0


async def test_one_call_grants_many_starts_from_several_logs(mq: LeanMQ) -> None:
    """Batched asks get what the same asks one by one would: per log, in order, spaced
    by per + slack (3 per 10 s, slack 100 ms)."""
    store, keys = mq.store, mq.queue("q").keys
    a, b = keys.rate_limit("g", "a"), keys.rate_limit("g", "b")
    history = await store.rate_limit([a], [2], 3, 10_000, 100)
    t0 = -history[0]
    assert history == [-t0, -t0]
    got = await store.rate_limit([a, b], [5, 4], 3, 10_000, 100)
    t1, t2 = -got[0], -got[5]
    assert got == [
        -t1,  # log a: 2 of 3 used: now
        t0 + 10_100,  # then 10.1 s after the third latest
        t0 + 10_100,
        t1 + 10_100,
        t0 + 20_200,
        -t2,  # log b: empty, three now
        -t2,
        -t2,
        t2 + 10_100,
    ]


# -- the executor's step ---------------------------------------------------------------------


async def _runner(mq: LeanMQ, name: str, **options: Any) -> tuple[HandlerRunner, list[Any]]:
    queue, _ = await mq.create_queue_pair(name)
    calls: list[Any] = []

    @queue.handler(**options)
    async def handle(message: Message[Any]) -> None:
        calls.append((message.data, message.attempt, granted_start()))

    return mq.worker().runners[0], calls


async def _work(raw: aioredis.Redis, runner: HandlerRunner, data: Any) -> Work:
    await runner.queue.send_message(data, headers={"trace": "t-1"}, ttl=3600)
    ((sid, fields),) = await read_as(raw, runner.group, runner.consumer, runner.stream, 1)
    return Work(sid, fields, 1, time.monotonic())


async def test_a_message_over_the_limit_waits_deferred_without_using_an_attempt(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    runner, calls = await _runner(mq, "rl", rate_limit=RateLimit(1, per=60))
    first, second = await _work(raw, runner, 1), await _work(raw, runner, 2)
    await runner.executor.process(first)
    assert [c[0] for c in calls] == [1]
    assert calls[0][2] is not None  # the granted start, seconds on the Redis clock
    await runner.executor.process(second)
    assert [c[0] for c in calls] == [1], "over the limit: not started"
    stats = runner.stats
    assert (stats.rate_limited, stats.failed, stats.retried, stats.dead_lettered) == (1, 0, 0, 0)
    keys = runner.queue.keys
    ((_member, due),) = await raw.zrange(keys.delayed, 0, -1, withscores=True)
    # Its reserved start: a minute (and the limit's slack) after the first one's.
    assert int(due) == round(calls[0][2] * 1000) + 60_000 + 250
    assert await raw.xpending(runner.stream, runner.group) == {
        "pending": 1,  # the first one: its ack is buffered
        "min": first.sid,
        "max": first.sid,
        "consumers": [{"name": runner.consumer.encode(), "pending": 1}],
    }
    # Back from the delayed set at its start: it runs on its reservation, without asking
    # the limiter again; attempts, headers and TTL are unchanged.
    mq.store.clock_shift_ms = 60_250
    await mq.store.move_due(keys)
    ((sid, fields),) = await read_as(raw, runner.group, runner.consumer, runner.stream, 1)
    assert int(fields[FIELD_RESERVED]) == int(due)
    assert fields[b"x"] == second.fields[b"x"] if second.fields else False
    log = keys.rate_limit(runner.group)
    grants = await raw.lrange(log, 0, -1)
    await runner.executor.process(Work(sid, fields, 1, time.monotonic()))
    assert [(c[0], c[1]) for c in calls] == [(1, 1), (2, 1)]
    assert calls[1][2] == int(due) / 1000
    assert await raw.lrange(log, 0, -1) == grants, "a reservation is not asked for twice"


async def test_a_reservation_come_back_too_late_is_not_used(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """Started more than the slack after its grant, it could break the window: it asks
    the limiter again (and waits for its next start)."""
    runner, calls = await _runner(mq, "late", rate_limit=RateLimit(1, per=60))
    await runner.executor.process(await _work(raw, runner, 1))
    await runner.executor.process(await _work(raw, runner, 2))
    mq.store.clock_shift_ms = 120_000
    await mq.store.move_due(runner.queue.keys)
    ((sid, fields),) = await read_as(raw, runner.group, runner.consumer, runner.stream, 1)
    await runner.executor.process(Work(sid, fields, 1, time.monotonic()))
    assert [c[0] for c in calls] == [1]
    assert (runner.stats.rate_limit_late, runner.stats.rate_limited) == (1, 2)
    assert (await runner.queue.get_info()).delayed_messages == 1


async def test_a_redelivered_reservation_asks_the_limiter_again(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """A reclaimed copy (delivered twice) may have started already: it asks again."""
    runner, calls = await _runner(mq, "rl2", rate_limit=RateLimit(1, per=60))
    work = await _work(raw, runner, 1)
    assert work.fields is not None
    work.fields[FIELD_RESERVED] = b"1"
    work.deliveries = 2
    await runner.executor.process(work)
    assert [c[0] for c in calls] == [1]
    assert await raw.llen(runner.queue.keys.rate_limit(runner.group)) == 1


async def test_a_failing_key_function_dead_letters_the_message(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    limit = RateLimit(5, key=lambda m: m.data["customer"])
    runner, calls = await _runner(mq, "rlk", rate_limit=limit)
    await runner.executor.process(await _work(raw, runner, {"no": "customer"}))
    await runner.executor.process(await _work(raw, runner, {"customer": [1]}))
    await runner.executor.process(await _work(raw, runner, {"customer": "acme"}))
    assert [c[0] for c in calls] == [{"customer": "acme"}]
    dead = await runner.queue.dead_letter_queue().peek_messages()
    reasons = [m.dead_letter.reason for m in dead if m.dead_letter]
    assert reasons == [
        "rate limit key failed: KeyError: 'customer'",
        "rate limit key failed: TypeError: it returned list, not a str or int",
    ]
    assert await raw.exists(runner.queue.keys.rate_limit(runner.group, "acme")) == 1


async def test_when_the_limiter_cannot_answer_the_message_stays_pending(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    """A Redis error on the ask (here a wrong-typed log): not started, not settled, not
    counted as a failure: it stays pending and is reclaimed later, like a crash."""
    runner, calls = await _runner(mq, "broken", rate_limit=RateLimit(5))
    await raw.set(runner.queue.keys.rate_limit(runner.group), "not a list")
    work = await _work(raw, runner, 1)
    await runner.executor.process(work)
    assert calls == []
    stats = runner.stats
    assert (stats.failed, stats.rate_limited, stats.dead_lettered) == (0, 0, 0)
    pending = await raw.xpending_range(runner.stream, runner.group, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [work.sid]


async def test_many_processors_asking_at_once_get_one_grant_each(mq: LeanMQ) -> None:
    """200 asks at once (two keys, 60 per 30 s each): each gets its own grant."""
    runner, _ = await _runner(mq, "many", rate_limit=RateLimit(60, per=30))
    limiter = runner.executor.limiter
    assert limiter is not None
    keys = runner.queue.keys
    logs = [keys.rate_limit(runner.group, k) for k in ("a", "b")]
    grants: dict[str, list[int]] = {log: [] for log in logs}

    async def ask(log: str) -> None:
        granted = await limiter._grant(log)
        assert granted is not None
        grants[log].append(granted)

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(ask, logs[i % 2])
    for log in logs:
        now = [g for g in grants[log] if g < 0]
        later = sorted(g for g in grants[log] if g > 0)
        assert len(now) == 60 and len(later) == 40, log
        assert min(later) >= max(-g for g in now) + 30_000
        assert await mq.store.client.llen(log) == 60


async def test_a_partitioned_queue_shares_one_limit_across_its_partitions(mq: LeanMQ) -> None:
    orders = mq.queue("orders", partitions=3)

    @orders.handler(rate_limit=RateLimit(10))
    async def handle(data: Any) -> None: ...

    logs = {
        runner.executor.limiter.log_key for runner in mq.worker().runners if runner.executor.limiter
    }
    assert logs == {mq.queue("orders#0").keys.rate_limit("orders-group").replace("#0", "")}


async def test_on_a_cluster_a_partitioned_queue_keeps_one_limit(scmq: LeanMQ) -> None:
    """3 partitions in 3 slots; the limit (5 per s) in the logical queue's slot: asking
    and deferring are separate scripts there. 15 messages: at least 2 s, none lost."""
    orders = scmq.queue("orders", partitions=3)
    granted: list[int] = []

    @orders.handler(rate_limit=RateLimit(5, per=1.0))
    async def handle(message: Message[int]) -> None:
        start = granted_start()
        assert start is not None and message.attempt == 1
        granted.append(round(start * 1000))

    await orders.send_messages(list(range(15)))
    async with scmq.worker(**FAST):
        await wait_until(lambda: len(granted) == 15, within=20, what="15 handled")
    assert most_in_any_window(granted, 1000) <= 5
    assert max(granted) - min(granted) >= 2000
    assert sum([(await p.get_info()).delayed_messages for p in orders.partitions]) == 0


# -- a worker -----------------------------------------------------------------------------


async def test_a_limited_key_waits_while_other_keys_flow(mq: LeanMQ, raw: aioredis.Redis) -> None:
    """Key A: 50 messages at 5/s (10 s). Key B's messages, sent after all of A's, are all
    handled within the first second or two, while A's wait deferred (holding no slot)."""
    queue, _ = await mq.create_queue_pair("keyed")
    started: dict[str, list[int]] = {"A": [], "B": []}

    @queue.handler(concurrency=2, rate_limit=RateLimit(5, per=1.0, key=lambda m: m.data["k"]))
    async def handle(message: Message[dict[str, Any]]) -> None:
        granted = granted_start()
        assert granted is not None
        started[message.data["k"]].append(round(granted * 1000))

    await queue.send_messages([{"k": "A", "n": n} for n in range(50)])
    await queue.send_messages([{"k": "B", "n": n} for n in range(5)])
    begin = anyio.current_time()
    async with mq.worker(**FAST):
        await wait_until(lambda: len(started["B"]) == 5, within=10, what="key B handled")
        b_done = anyio.current_time() - begin
        assert len(started["A"]) < 25, "B did not wait for A's backlog"
        await wait_until(lambda: len(started["A"]) == 50, within=30, what="key A handled")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    assert b_done < 5.0, f"key B took {b_done:.1f} s behind key A's limit"
    assert most_in_any_window(started["A"], 1000) <= 5
    assert max(started["A"]) - min(started["A"]) >= 9000  # 50 at 5/s: at least 9 s
    assert (await queue.get_info()).delayed_messages == 0
    assert await queue.dead_letter_queue().peek_messages() == []


async def test_two_worker_processes_never_start_more_than_50_in_any_second(
    redis_server: RedisServer, mq: LeanMQ, raw: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    """Issue 16's done-when: 2 worker processes, a handler limited to 50/s, 300 messages.

    Checked on the Redis clock (the host's: Redis runs here): the starts the limiter
    granted and the handlers' own start times, at most 50 in any 1 s window each; no
    handler starts before its grant."""
    queue, dlq = await mq.create_queue_pair("work")
    ledger = f"{prefix}ledger"
    total = 300
    await queue.send_messages(list(range(total)))
    env = app_env(redis_server.url, prefix, APP_LEDGER=ledger, APP_LIMIT=50, APP_PER=1.0)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = [start_app("rate_limited", env, log) for log in logs]
    try:
        await wait_until(
            lambda: _llen_at_least(raw, ledger, total),
            within=40,
            what="300 handled",
        )
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    except AssertionError:
        raise AssertionError("\n".join(log_tail(log) for log in logs)) from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await anyio.to_thread.run_sync(lambda p=proc: p.wait(10))
            except Exception:
                proc.kill()
                proc.wait()
    rows = [line.split() for line in await list_items(raw, ledger)]
    granted = [int(r[0]) for r in rows]
    started = [int(r[1]) for r in rows]
    assert sorted(int(r[2]) for r in rows) == list(range(total)), "each handled exactly once"
    assert {r[3] for r in rows} == {"1"}, "waiting used no attempt"
    assert len({r[4] for r in rows}) == 2, "both processes handled messages"
    assert most_in_any_window(granted, 1000) <= 50
    assert most_in_any_window(started, 1000) <= 50
    assert all(s >= g for g, s in zip(granted, started, strict=True)), "started before its grant"
    assert max(granted) - min(granted) >= 5000  # 300 at 50/s: six windows at least
    assert await dlq.peek_messages() == []
    assert (await queue.get_info()).delayed_messages == 0


async def _llen_at_least(raw: aioredis.Redis, key: str, n: int) -> bool:
    return int(await raw.llen(key)) >= n
