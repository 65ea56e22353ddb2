"""Failing handlers and bad entries: retries with backoff, Retry, Reject, timeouts,
validation errors, garbled entries and a message that keeps killing its worker."""

from __future__ import annotations

import pickle
import random
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Message, Reject, Retry
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import (
    add_entry,
    app_env,
    entries,
    list_items,
    log_tail,
    settled,
    start_app,
    wait_until,
)

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


class Order(msgspec.Struct):
    order_id: int
    sku: str


class Line(msgspec.Struct):
    qty: int


class Basket(msgspec.Struct):
    items: list[Line]


def no_wait(_retry: int) -> float:
    return 0.01


async def dead_letters(mq: LeanMQ, name: str) -> list[Message[Any]]:
    return await mq.queue(name).dead_letter_queue().peek_messages(count=100)


async def test_retries_use_the_backoff_then_dead_letter_with_metadata(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("flaky")
    backoff_calls: list[int] = []
    attempts: list[Message[Any]] = []

    def backoff(retry: int) -> float:
        backoff_calls.append(retry)
        return 0.05

    @queue.handler(max_retries=3, backoff=backoff)
    async def handle(message: Message[dict[str, int]]) -> None:
        attempts.append(message)
        raise ValueError(f"boom {message.data['n']}")

    await queue.send_message({"n": 1}, message_id="m-1", headers={"k": "v"})
    async with mq.worker(**FAST) as worker:
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")

    assert backoff_calls == [1, 2, 3]
    assert [m.attempt for m in attempts] == [1, 2, 3, 4]
    assert {m.message_id for m in attempts} == {"m-1"}
    assert {m.delivery_count for m in attempts} == {1}
    assert len({m.id for m in attempts}) == 4  # each retry is a new stream entry
    stats = worker.stats
    assert (stats.handled, stats.failed, stats.retried, stats.dead_lettered) == (0, 4, 3, 1)

    (dead,) = await dead_letters(mq, "flaky")
    assert dead.data == {"n": 1}
    assert dead.message_id == "m-1"
    assert dead.headers == {"k": "v"}
    info = dead.dead_letter
    assert info is not None
    assert info.error_type == "ValueError"
    assert "failed after 4 attempt(s)" in info.reason
    assert "ValueError: boom 1" in info.reason
    assert "ValueError: boom 1" in info.traceback
    assert "Traceback" in info.traceback
    assert info.attempts == 4
    assert info.source_queue == "flaky"
    assert info.source_id == attempts[-1].id
    assert info.group == queue.consumer_group
    assert info.failed_at > 0
    assert await raw.zcard(queue.keys.delayed) == 0


async def test_retry_raised_by_handler(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("asks")
    backoff_calls: list[int] = []
    calls: list[tuple[str, int]] = []

    def backoff(retry: int) -> float:
        backoff_calls.append(retry)
        return 0.01

    @queue.handler(max_retries=2, backoff=backoff)
    async def handle(message: Message[str]) -> None:
        calls.append((message.data, message.attempt))
        if message.data == "later" and message.attempt == 1:
            raise Retry(delay=0.6)
        if message.data == "never":
            raise Retry(reason="not yet")

    async with mq.worker(**FAST) as worker:
        await queue.send_message("later")
        # The retry waits in the delayed set for its own delay, not the backoff's.
        await wait_until(lambda: ("later", 1) in calls, what="first attempt")
        await wait_until(lambda: _zcard_is(raw, queue.keys.delayed, 1), what="scheduled")
        assert ("later", 2) not in calls
        await wait_until(lambda: ("later", 2) in calls, what="second attempt")
        assert backoff_calls == []

        await queue.send_message("never")
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")

    assert calls == [("later", 1), ("later", 2), ("never", 1), ("never", 2), ("never", 3)]
    assert backoff_calls == [1, 2]
    assert worker.stats.handled == 1
    (dead,) = await dead_letters(mq, "asks")
    assert dead.data == "never"
    assert dead.dead_letter is not None
    assert dead.dead_letter.error_type == "Retry"
    assert "not yet" in dead.dead_letter.reason
    assert dead.dead_letter.attempts == 3


async def _zcard_is(raw: aioredis.Redis, key: str, n: int) -> bool:
    return int(await raw.zcard(key)) == n


async def test_reject_dead_letters_on_first_delivery(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("picky")
    calls: list[str] = []
    backoff_calls: list[int] = []

    def backoff(retry: int) -> float:
        backoff_calls.append(retry)
        return 0.01

    @queue.handler(max_retries=5, backoff=backoff)
    async def handle(data: str) -> None:
        calls.append(data)
        if data == "bad":
            raise Reject("out of stock")

    async with mq.worker(**FAST) as worker:
        await queue.send_messages(["bad", "good"])
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
        await wait_until(lambda: worker.stats.handled == 1, what="handled")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")

    assert sorted(calls) == ["bad", "good"]
    assert backoff_calls == []
    assert worker.stats.retried == 0
    (dead,) = await dead_letters(mq, "picky")
    assert dead.data == "bad"
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "out of stock"
    assert dead.dead_letter.error_type == "Reject"
    assert dead.dead_letter.attempts == 1
    assert await raw.xlen(queue.stream) == 2  # no retry copy was made


async def test_validation_error_dead_letters_with_the_field_path(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    orders, baskets = mq.queue("orders"), mq.queue("baskets")
    handled: list[Any] = []

    @orders.handler
    async def handle_order(order: Order) -> None:
        handled.append(order)

    @baskets.handler
    async def handle_basket(message: Message[Basket]) -> None:
        handled.append(message.data)

    await orders.send_message({"order_id": "seven", "sku": "x"})
    await orders.send_message({"order_id": 8})
    await baskets.send_message({"items": [{"qty": 1}, {"qty": "two"}]})
    await orders.send_message({"order_id": 9, "sku": "ok"})
    async with mq.worker(**FAST) as worker:
        await wait_until(lambda: worker.stats.dead_lettered == 3, what="three dead-lettered")
        await wait_until(lambda: len(handled) == 1, what="the valid one")
        for q in (orders, baskets):
            await wait_until(partial(settled, raw, q.stream, q.consumer_group), what="acks")

    assert handled == [Order(order_id=9, sku="ok")]
    assert worker.stats.failed == 0
    assert worker.stats.retried == 0
    bad_orders = await dead_letters(mq, "orders")
    reasons = [m.dead_letter.reason for m in bad_orders if m.dead_letter]
    assert len(reasons) == 2
    assert "$.order_id" in reasons[0]
    assert "sku" in reasons[1]
    (bad_basket,) = await dead_letters(mq, "baskets")
    assert bad_basket.dead_letter is not None
    assert "$.items[1].qty" in bad_basket.dead_letter.reason
    assert bad_basket.dead_letter.error_type == "MessageDecodeError"
    assert bad_basket.data == {"items": [{"qty": 1}, {"qty": "two"}]}


async def test_garbled_entries_are_dead_lettered_unread(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("garbled")
    calls: list[Any] = []

    @queue.handler
    async def handle(data: Any) -> None:
        calls.append(data)

    rng = random.Random(1234)
    garbage = [
        {b"j": bytes(rng.randrange(256) for _ in range(64))},
        {b"payload": b'{"id": "x", "ts": 1, "p": 1}'},
        {b"j": b'{"id": "x", "ts": 1.0, "p": {"a": [1, 2'},
        {b"j": pickle.dumps({"id": "x", "ts": 1.0, "p": 1})},
        {b"m": pickle.dumps({"id": "x", "ts": 1.0, "p": 1})},
        {b"j": b'{"id": "x", "ts": 1.0, "p": 1}', b"a": b"many"},
        {b"j": b'{"ts": 1.0, "p": 1}'},
    ]
    ids = [await add_entry(raw, queue.stream, fields) for fields in garbage]
    await queue.send_message({"fine": True})
    async with mq.worker(**FAST) as worker:
        await wait_until(lambda: worker.stats.dead_lettered == len(garbage), what="all moved")
        await wait_until(lambda: calls == [{"fine": True}], what="the good one")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")

    assert worker.stats.failed == 0
    dead = await entries(raw, queue.dead_letter_queue().stream)
    assert len(dead) == len(garbage)
    by_source = {fields[b"dlq.id"]: fields for _, fields in dead}
    assert set(by_source) == set(ids)
    for sid, original in zip(ids, garbage, strict=True):
        fields = by_source[sid]
        # The entry is copied intact, with the reason next to it.
        assert {k: v for k, v in fields.items() if not k.startswith(b"dlq.")} == original
        assert fields[b"dlq.error"] == b"MessageDecodeError"
        assert fields[b"dlq.reason"]
        assert fields[b"dlq.queue"] == b"garbled"
    assert b"not a leanmq message" in by_source[ids[1]][b"dlq.reason"]
    assert b"attempts" in by_source[ids[5]][b"dlq.reason"]


async def test_timeout_cancels_the_handler_and_counts_as_a_failure(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("sluggish")
    started: list[int] = []
    cancelled: list[int] = []

    @queue.handler(timeout=0.2, max_retries=2, backoff=no_wait)
    async def handle(message: Message[str]) -> None:
        started.append(message.attempt)
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(message.attempt)
            raise

    async with mq.worker(**FAST) as worker:
        await queue.send_message("zzz")
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")

    assert started == [1, 2, 3]
    assert cancelled == [1, 2, 3]
    assert (worker.stats.failed, worker.stats.retried, worker.stats.handled) == (3, 2, 0)
    (dead,) = await dead_letters(mq, "sluggish")
    assert dead.dead_letter is not None
    assert dead.dead_letter.error_type == "TimeoutError"
    assert "timeout of 0.2s" in dead.dead_letter.reason
    assert dead.dead_letter.attempts == 3
    # Where the handler was stuck when it was cancelled is kept.
    assert "sleep_forever" in dead.dead_letter.traceback


async def test_a_timeout_error_of_the_handler_itself_is_reported_as_such(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("upstream")

    @queue.handler(timeout=30, max_retries=0)
    async def handle(data: str) -> None:
        raise TimeoutError("the upstream API timed out")

    async with mq.worker(**FAST) as worker:
        await queue.send_message("call")
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    (dead,) = await dead_letters(mq, "upstream")
    assert dead.dead_letter is not None
    assert dead.dead_letter.error_type == "TimeoutError"
    assert "the upstream API timed out" in dead.dead_letter.reason
    assert "exceeded its timeout" not in dead.dead_letter.reason


async def test_a_failing_backoff_function_does_not_kill_the_worker(
    mq: LeanMQ, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    queue = mq.queue("badbackoff")
    calls: list[tuple[str, int]] = []

    def broken(retry: int) -> float:
        raise ZeroDivisionError("bug in the backoff")

    @queue.handler(max_retries=1, backoff=broken)
    async def handle(message: Message[str]) -> None:
        calls.append((message.data, message.attempt))
        if message.attempt == 1 and message.data == "flaky":
            raise RuntimeError("first attempt fails")

    async with mq.worker(**FAST) as worker:
        await queue.send_message("flaky")
        # Retried after the default backoff (about a second) instead.
        await wait_until(lambda: ("flaky", 2) in calls, what="the retry")
        await queue.send_message("next")
        await wait_until(lambda: ("next", 1) in calls, what="the worker still running")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    assert worker.stats.handled == 2
    assert worker.stats.retried == 1
    assert [r for r in caplog.records if r.msg == "backoff_failed"]


async def test_message_that_kills_its_worker_is_dead_lettered_by_delivery_count(
    redis_server: RedisServer, mq: LeanMQ, raw: aioredis.Redis, prefix: str, tmp_path: Path
) -> None:
    queue = mq.queue("crashy")
    ledger = f"{prefix}ledger"
    await queue.send_messages(["poison", "good1", "good2"])
    env = app_env(
        redis_server.url,
        prefix,
        CRASHER_CONSUMER="crasher-1",
        CRASHER_MAX_DELIVERIES=2,
        CRASHER_LEDGER=ledger,
    )
    codes: list[int] = []
    log = tmp_path / "crasher.log"
    for _ in range(5):
        proc = start_app("crasher", env, log)
        try:
            with anyio.fail_after(60):
                await anyio.to_thread.run_sync(proc.wait)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
    assert codes == [1, 1, 0], log_tail(log)
    calls = await list_items(raw, ledger)
    assert calls == ["poison:1", "poison:2", "good1:1", "good2:1"]
    (dead,) = await dead_letters(mq, "crashy")
    assert dead.data == "poison"
    assert dead.dead_letter is not None
    assert dead.dead_letter.error_type == "MaxDeliveriesExceeded"
    assert "max_deliveries=2" in dead.dead_letter.reason
    assert await settled(raw, queue.stream, queue.consumer_group)
