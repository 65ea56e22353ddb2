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
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from leanmq_async import CancelOutcome, LeanMQ, Message
from leanmq_async.exceptions import ConfigurationError, WrongQueueKindError
from leanmq_async.ops import admin_app
from leanmq_async.ops.admin_cli import main as admin_main
from leanmq_async.testing import RedisServer
from tests.cluster_fixtures import scmq, small_cluster
from tests.worker_apps.common import wait_until

__all__ = ["scmq", "small_cluster"]  # fixtures, imported for pytest

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


async def test_a_retry_in_its_backoff_is_cancelled_by_the_first_id(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("c")
    sid = await q.send_message({"k": 1})
    await q.get_messages(1, consumer_id="w1")
    call = mq.store.retry_call(q.keys, q.consumer_group, "w1", sid, 60_000, 1)
    assert await mq.store.settle_many([call]) == [1]  # retry 2 due in a minute
    assert await q.cancel(sid) is CancelOutcome.CANCELLED
    assert (await q.get_info()).delayed_messages == 0
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "c-group")]
    assert await q.cancel(sid) is CancelOutcome.FINISHED


async def test_a_pending_message_is_marked_and_its_retry_refused(mq: LeanMQ) -> None:
    """Running (pending): marked; the worker's retry script then refuses to retry it."""
    q, _ = await mq.create_queue_pair("c")
    sid = await q.send_message({"k": 1})
    await q.get_messages(1, consumer_id="w1")
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


# -- the worker ------------------------------------------------------------------------


class Recorder:
    """A handler that records its starts and ends and runs as long as it is told."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.cancelled: list[tuple[Any, float]] = []

    async def handle(self, message: Message[Any]) -> None:
        self.started.append(message.data)
        try:
            await anyio.sleep(self.seconds)
        except BaseException:
            self.cancelled.append((message.data, anyio.current_time()))
            raise
        self.finished.append(message.data)


async def _any_dead(mq: LeanMQ, name: str) -> bool:
    return bool(await _dead(mq, name))


async def test_a_cancelled_running_handler_stops_within_a_second(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("c")
    rec = Recorder(60)
    q.handler(max_retries=5)(rec.handle)
    async with mq.worker(block_ms=100) as worker:
        sid = await q.send_message({"k": 1})
        await wait_until(lambda: bool(rec.started))
        asked = anyio.current_time()
        assert await q.cancel(sid) is CancelOutcome.RUNNING
        await wait_until(lambda: bool(rec.cancelled), within=5)
        assert rec.cancelled[0][1] - asked < 1.0
        await wait_until(lambda: _any_dead(mq, "c"))
        assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "c-group")]
        assert worker.stats.retried == 0 and worker.stats.handled == 0
    assert rec.finished == []
    assert (await q.get_info()).pending_messages == 0
    assert await q.cancel(sid) is CancelOutcome.FINISHED  # settled: nothing left to cancel


async def test_the_processor_goes_on_after_a_cancel_and_cancels_only_its_message(
    mq: LeanMQ,
) -> None:
    """Concurrency 1: the one processor's scope was used by the cancel; the next message
    runs to its end in a new one. Another handler running beside it is not touched."""
    q, _ = await mq.create_queue_pair("c")
    rec = Recorder(0.5)
    q.handler(concurrency=2)(rec.handle)
    async with mq.worker(block_ms=100):
        first = await q.send_message({"k": 1})
        await q.send_message({"k": 2})
        await wait_until(lambda: len(rec.started) == 2)
        assert await q.cancel(first) is CancelOutcome.RUNNING
        await wait_until(lambda: rec.finished == [{"k": 2}])
        await q.send_message({"k": 3})
        await q.send_message({"k": 4})
        await wait_until(lambda: len(rec.finished) == 3)
    assert [data for data, _ in rec.cancelled] == [{"k": 1}]
    assert sorted(d["k"] for d in rec.finished) == [2, 3, 4]
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "c-group")]


async def test_cancels_under_load_every_message_ends_once(mq: LeanMQ) -> None:
    """300 messages (a third delayed), handlers of 0-100 ms at concurrency 10, 100 cancels
    at random moments: each message ends exactly once, handled or dead-lettered
    "cancelled", as its cancel's outcome says; none cancelled unstarted ever starts."""
    import random

    rng = random.Random(16)
    q, _ = await mq.create_queue_pair("c")
    started: Counter[int] = Counter()
    handled: list[int] = []

    @q.handler(concurrency=10, max_retries=3, backoff=lambda n: 0.01)
    async def handle(message: Message[Any]) -> None:
        k = message.data["k"]
        started[k] += 1
        await anyio.sleep(rng.random() * 0.1)
        if k % 7 == 0 and message.attempt == 1:
            raise RuntimeError("first attempt fails")  # some cancels meet a retry
        handled.append(k)

    outcomes: dict[int, CancelOutcome] = {}
    async with mq.worker(block_ms=100, maintenance_interval=0.02):
        ids: dict[int, str] = {}
        for k in range(300):
            delay = 0.3 if k % 3 == 0 else None
            ids[k] = await q.send_message({"k": k}, delay=delay)
        for k in rng.sample(range(300), 100):
            await anyio.sleep(rng.random() * 0.01)
            outcomes[k] = await q.cancel(ids[k])
        dead = len([o for o in outcomes.values() if o is CancelOutcome.CANCELLED])

        async def all_settled() -> bool:
            info = await q.get_info()
            return (
                info.pending_messages == 0
                and info.delayed_messages == 0
                and (len(handled) + len(await _dead(mq, "c")) >= 300)
            )

        await wait_until(all_settled, within=60)
        await anyio.sleep(0.2)
    dead_ks = [d["k"] for d, reason, _ in await _dead(mq, "c") if reason == "cancelled"]
    assert len(dead_ks) == len(set(dead_ks)), "dead-lettered twice"
    assert len(handled) == len(set(handled)), "handled twice"
    assert not set(handled) & set(dead_ks), "handled and dead-lettered"
    assert set(handled) | set(dead_ks) == set(range(300)), "a message was lost"
    for k, outcome in outcomes.items():
        if outcome is CancelOutcome.CANCELLED:  # never (again: a retry in its backoff) ran
            assert k in dead_ks and started[k] <= (1 if k % 7 == 0 else 0), (k, outcome)
        elif outcome is CancelOutcome.FINISHED:
            assert k in handled, (k, outcome)
        elif outcome is CancelOutcome.NOT_FOUND:  # a delayed one already due: a new id
            assert k % 3 == 0 and k in handled, (k, outcome)
        else:  # RUNNING: held by the worker; cancelled (in its handler or before it
            # started), or its handler finished first
            assert outcome is CancelOutcome.RUNNING, (k, outcome)
            assert k in dead_ks or k in handled, (k, outcome)
    assert dead <= len(dead_ks)
    seen = set(outcomes.values())
    assert {CancelOutcome.CANCELLED, CancelOutcome.RUNNING} <= seen, seen


async def test_a_cancelled_delayed_message_never_runs_while_a_worker_runs(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("c")
    rec = Recorder(0)
    q.handler(rec.handle)
    async with mq.worker(block_ms=100, maintenance_interval=0.05):
        later = await q.send_message({"k": 1}, delay=0.5)
        await q.send_message({"k": 2}, delay=0.5)
        assert await q.cancel(later) is CancelOutcome.CANCELLED
        await wait_until(lambda: rec.finished == [{"k": 2}])
        await anyio.sleep(0.3)
    assert rec.started == [{"k": 2}]
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "")]


async def test_a_handler_that_finished_first_is_acked_and_reported_finished(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("c")
    rec = Recorder(0)
    q.handler(rec.handle)
    async with mq.worker(block_ms=100):
        sid = await q.send_message({"k": 1})
        await wait_until(lambda: bool(rec.finished))
        await wait_until(lambda: _pending_is(q, 0))
        assert await q.cancel(sid) is CancelOutcome.FINISHED
    assert await _dead(mq, "c") == []


async def _pending_is(q: Any, n: int) -> bool:
    return bool((await q.get_info()).pending_messages == n)


async def test_a_marker_set_while_no_worker_listened_is_reconciled_at_start(mq: LeanMQ) -> None:
    """Cancelled while a dead consumer held it (nobody subscribed): the worker that
    reclaims it learns the marker from Redis at start and dead-letters it unrun."""
    q, _ = await mq.create_queue_pair("c")
    sid = await q.send_message({"k": 1})
    await q.get_messages(1, consumer_id="dead")
    assert await q.cancel(sid) is CancelOutcome.RUNNING
    rec = Recorder(0)
    q.handler(visibility_timeout=0.2)(rec.handle)
    async with mq.worker(block_ms=100, reclaim_interval=0.1):
        await wait_until(lambda: _any_dead(mq, "c"))
    assert rec.started == []
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "c-group")]


async def test_a_cancel_published_while_disconnected_is_reconciled(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("c")
    rec = Recorder(60)
    q.handler(rec.handle)
    async with mq.worker(block_ms=100) as worker:
        listener = worker.cancel_listener
        assert listener.subscriptions == 1
        sid = await q.send_message({"k": 1})
        await wait_until(lambda: bool(rec.started))
        await listener.disconnect()
        assert await q.cancel(sid) is CancelOutcome.RUNNING  # announced to nobody
        await wait_until(lambda: bool(rec.cancelled), within=5)
        assert listener.subscriptions >= 2
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "c-group")]


async def test_a_group_that_reads_a_cancelled_message_later_never_runs_it(mq: LeanMQ) -> None:
    """Running in group A when cancelled, unread in B: B's worker dead-letters it unrun."""
    q, _ = await mq.create_queue_pair("c")
    await mq.store.ensure_groups([q.stream], ["B"])
    sid = await q.send_message({"k": 1})
    await q.get_messages(1, consumer_id="a-worker")  # group c-group holds it
    assert await q.cancel(sid) is CancelOutcome.RUNNING
    rec = Recorder(0)
    q.handler(group="B")(rec.handle)
    async with mq.worker(block_ms=100):
        await wait_until(lambda: _any_dead(mq, "c"))
    assert rec.started == []
    assert await _dead(mq, "c") == [({"k": 1}, "cancelled", "B")]


# -- a worker process ----------------------------------------------------------------------


async def test_a_worker_process_stops_a_cancelled_handler_within_a_second(
    redis_server: RedisServer, mq: LeanMQ, tmp_path: Path
) -> None:
    """``leanmq-worker`` in its own process; the cancels come from this one."""
    q, _ = await mq.create_queue_pair("orders")
    env = dict(os.environ)
    env.update(
        LEANMQ_URL=redis_server.url,
        CLI_TEST_PREFIX=mq.prefix,
        CLI_TEST_SLEEP="60",
        PYTHONUNBUFFERED="1",
    )
    proc = _start_worker(env, tmp_path / "worker.log")
    try:
        sid = await q.send_message({"k": "now"})
        started = f"{mq.prefix}started"
        await wait_until(lambda: _nonempty(mq, started), within=30)
        later = await q.send_message({"k": "later"}, delay=1)
        assert await q.cancel(later) is CancelOutcome.CANCELLED
        asked = anyio.current_time()
        assert await q.cancel(sid) is CancelOutcome.RUNNING
        await wait_until(lambda: _dead_count(mq, 2), within=5)
        assert anyio.current_time() - asked < 1.0, "the running handler stopped too late"
        await anyio.sleep(1.5)  # past the delayed message's due time
        assert await mq.redis.lrange(started, 0, -1) == [sid.encode()]
        assert await mq.redis.llen(f"{mq.prefix}done") == 0
        assert sorted(await _dead(mq, "orders"), key=str) == [
            ({"k": "later"}, "cancelled", ""),
            ({"k": "now"}, "cancelled", "orders-group"),
        ]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``leanmq-worker worker_app:mq`` (tests/cli_apps) with its output in ``log``."""
    apps = ROOT / "tests" / "cli_apps"
    command = [sys.executable, "-m", "leanmq_async.worker.cli", "worker_app:mq"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "--app-dir", str(apps), "--log-format", "json", "--grace-period", "0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _dead_count(mq: LeanMQ, n: int) -> bool:
    return len(await _dead(mq, "orders")) >= n


async def _nonempty(mq: LeanMQ, key: str) -> bool:
    return bool(await mq.redis.llen(key))


# -- the admin CLI and HTTP API ------------------------------------------------------------


async def test_leanmq_cancel(
    mq: LeanMQ, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    q, _ = await mq.create_queue_pair("orders")
    sid = await q.send_message({"k": 1})
    base = ["--url", redis_server.url, "--prefix", mq.prefix]

    async def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = await anyio.to_thread.run_sync(admin_main, [*base, *argv])
        return code, capsys.readouterr().out

    code, out = await run("cancel", "orders", sid)
    assert code == 0 and "cancelled before it started" in out, out
    code, out = await run("cancel", "orders", sid, "--json")
    assert code == 1 and '"outcome":"not_found"' in out.replace(" ", ""), out
    code, _ = await run("cancel", "missing", sid)
    assert code != 0
    assert await _dead(mq, "orders") == [({"k": 1}, "cancelled", "orders-group")]


async def test_post_cancel(mq: LeanMQ) -> None:
    q, _ = await mq.create_queue_pair("orders")
    sid = await q.send_message({"k": 1})
    running = await q.send_message({"k": 2})
    await q.get_messages(1, consumer_id="w")  # {"k": 1} is pending now
    transport = httpx.ASGITransport(app=admin_app(mq, token="t"))
    auth = {"Authorization": "Bearer t"}
    async with httpx.AsyncClient(transport=transport, base_url="http://a", headers=auth) as c:
        r = await c.post(f"/cancel/orders/{sid}")
        assert r.status_code == 200
        assert r.json() == {"queue": "orders", "id": sid, "outcome": "running"}
        r = await c.post(f"/cancel/orders/{running}")
        assert r.json()["outcome"] == "cancelled"
        assert (await c.post("/cancel/orders/1-1")).json()["outcome"] == "not_found"
        assert (await c.get(f"/cancel/orders/{sid}")).status_code == 405
        assert (await c.post("/cancel/orders")).status_code == 404
        assert (await c.post(f"/cancel/missing/{sid}")).status_code == 404
        assert (await c.post(f"/cancel/orders:dlq/{sid}")).status_code == 400
        unauthorized = await c.post(f"/cancel/orders/{sid}", headers={"Authorization": ""})
        assert unauthorized.status_code == 401


# -- Redis Cluster ---------------------------------------------------------------------


async def test_cancel_on_a_cluster(scmq: LeanMQ) -> None:
    """Every key of the script in the queue's slot; the listener subscribes on a cluster."""
    pq = scmq.queue("pc", partitions=3)
    await pq.create()
    rec = Recorder(60)
    pq.handler(rec.handle)
    delayed = await pq.send_message({"k": 0}, key="a", delay=30)
    assert await pq.cancel(delayed, key="a") is CancelOutcome.CANCELLED
    async with scmq.worker(block_ms=100):
        sid = await pq.send_message({"k": 1}, key="b")
        await wait_until(lambda: bool(rec.started))
        assert await pq.cancel(sid, key="b") is CancelOutcome.RUNNING
        await wait_until(lambda: bool(rec.cancelled), within=5)
    assert rec.finished == []
