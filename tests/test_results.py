"""Handler results: ``result_ttl=``, ``queue.call()``, ``queue.get_result()``, ``webhook.call()``.

One ``leanmq-worker`` subprocess (tests/cli_apps/results_app.py) runs the handlers for the
whole module; the tests call it from this process, on a private redis-server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pydantic
import pytest
import redis.asyncio as aioredis

from leanmq_async import (
    ConfigurationError,
    DeadLetteredError,
    LeanMQ,
    LeanMQWebhook,
    MessageDecodeError,
)
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import log_tail, read_as, wait_until

pytestmark = pytest.mark.anyio

APPS = Path(__file__).parent / "cli_apps"


class Receipt(msgspec.Struct):
    item: str
    total: float


class Order(msgspec.Struct):
    item: str
    quantity: int


class Total(pydantic.BaseModel):
    total: float
    currency: str


@pytest.fixture(scope="module")
def app_prefix() -> str:
    return f"r{uuid.uuid4().hex[:10]}:"


@pytest.fixture(scope="module")
def worker(
    redis_server: RedisServer, app_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The results app in a ``leanmq-worker`` subprocess; yields its log file."""
    log = tmp_path_factory.mktemp("results") / "worker.log"
    env = dict(os.environ, LEANMQ_URL=redis_server.url, CLI_TEST_PREFIX=app_prefix)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "leanmq_async.worker.cli", "results_app:mq"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*cmd, "--app-dir", str(APPS)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
async def client(redis_server: RedisServer, app_prefix: str, worker: Path) -> AsyncIterator[LeanMQ]:
    async with LeanMQ(redis_server.url, prefix=app_prefix) as mq:
        yield mq


async def subscribers(raw: aioredis.Redis) -> int:
    """Connections of the server subscribed to a channel, the workers' cancel listeners
    (one subscription each to ``{prefix}cancel``, issue 16) left out."""
    total = sum(1 for c in await raw.client_list() if int(c.get("sub", 0)))
    channels = await raw.pubsub_channels("*cancel")
    listeners = sum(int(n) for _, n in await raw.pubsub_numsub(*channels)) if channels else 0
    return total - listeners


# -- call() ---------------------------------------------------------------------------------


async def test_call_returns_the_handlers_value_from_another_process(
    client: LeanMQ, worker: Path
) -> None:
    calc = client.queue("calc")
    try:
        assert await calc.call({"x": 21}, timeout=20) == 42
    except TimeoutError:
        raise AssertionError(log_tail(worker)) from None
    assert await calc.call({"x": 5}, timeout=10) == 10  # the subscription is reused


async def test_the_result_is_stored_with_the_ack_and_readable_later(
    client: LeanMQ, raw: aioredis.Redis, redis_server: RedisServer, app_prefix: str
) -> None:
    calc = client.queue("calc")
    mid = f"order-{uuid.uuid4().hex}"
    assert await calc.call({"x": 4}, message_id=mid, timeout=10) == 8
    key = calc.keys.result(mid)
    assert 0 < await raw.pttl(key) <= 60_000
    info = await raw.xinfo_groups(calc.stream)
    assert [int(g["pending"]) for g in info] == [0]  # acked
    # Another client (another process, as far as Redis knows) reads it at once.
    async with LeanMQ(redis_server.url, prefix=app_prefix) as other:
        assert await other.queue("calc").get_result(mid, timeout=5) == 8


async def test_a_failing_handlers_dlq_reason_reaches_the_caller(client: LeanMQ) -> None:
    calc = client.queue("calc")
    with pytest.raises(DeadLetteredError) as caught:
        await calc.call({"x": 21, "fail": True}, timeout=20)
    err = caught.value
    assert err.error_type == "ValueError"
    assert "cannot handle 21" in err.reason and err.attempts == 2
    assert err.queue == "calc" and "cannot handle 21" in str(err)
    dlq = await calc.dead_letter_queue().get_messages(count=100)
    assert any(m.message_id == err.message_id for m in dlq)

    with pytest.raises(DeadLetteredError) as caught:
        await calc.call({"x": 1, "reject": True}, timeout=20)
    assert caught.value.error_type == "Reject"
    assert caught.value.reason == "not my kind of number"


async def test_an_unencodable_result_dead_letters_the_message(client: LeanMQ) -> None:
    with pytest.raises(DeadLetteredError) as caught:
        await client.queue("calc").call({"x": 1, "unencodable": True}, timeout=20)
    assert caught.value.error_type == "MessageEncodeError"
    assert "cannot be encoded as json" in caught.value.reason


async def test_a_timeout_raises_and_the_message_is_still_handled(
    client: LeanMQ, raw: aioredis.Redis, app_prefix: str
) -> None:
    calc = client.queue("calc")
    mid = f"gated-{uuid.uuid4().hex}"
    with pytest.raises(TimeoutError, match=mid):
        await calc.call({"x": 21, "gate": True}, message_id=mid, timeout=0.3)
    await raw.rpush(f"{app_prefix}gate", "go")
    assert await calc.get_result(mid, timeout=20) == 42


async def test_typed_payloads_and_results(client: LeanMQ) -> None:
    typed = client.queue("typed", payload_type=Order)
    receipt = await typed.call(Order("pen", 4), timeout=20, result_type=Receipt)
    assert receipt == Receipt("pen", 10.0)
    with pytest.raises(MessageDecodeError, match="does not decode"):
        await typed.call(Order("pen", 4), timeout=20, result_type=int)
    modelled = client.queue("modelled")
    total = await modelled.call({"a": 1.5, "b": 2}, timeout=20, result_type=Total)
    assert total == Total(total=3.5, currency="EUR")
    assert await modelled.call({"a": 1, "b": 2}, timeout=20) == {"total": 3.0, "currency": "EUR"}


async def test_partitioned_queues_and_webhooks(client: LeanMQ) -> None:
    parts = client.queue("parts", partitions=2)
    await parts.create()
    assert await parts.call({"x": 1}, key="customer-7", timeout=20) == 2
    mid = f"p-{uuid.uuid4().hex}"
    await parts.send_message({"x": 41}, key="customer-9", message_id=mid)
    assert await parts.get_result(mid, timeout=20) == 42  # any partition, without the key
    webhook = LeanMQWebhook(mq=client)
    await client.create_queue_pair(webhook.queue("/add").name)
    assert await webhook.call("/add", {"a": 2, "b": 3}, timeout=20) == {"sum": 5}


async def test_results_expire(client: LeanMQ, raw: aioredis.Redis) -> None:
    short = client.queue("short")
    mid = f"brief-{uuid.uuid4().hex}"
    assert await short.call({"x": 3}, message_id=mid, timeout=20) == 6
    key = short.keys.result(mid)
    assert 0 < await raw.pttl(key) <= 2_000
    await wait_until(lambda: _gone(raw, key), within=10, what="the result to expire")
    # Nor is its announcement, should it still wait unread on this client's subscription.
    with pytest.raises(TimeoutError):
        await short.get_result(mid, timeout=0.2)


async def _gone(raw: aioredis.Redis, key: str) -> bool:
    return not await raw.exists(key)


# -- one connection for all waiters --------------------------------------------------------


async def test_200_concurrent_waiters_share_one_connection(
    client: LeanMQ, raw: aioredis.Redis
) -> None:
    calc = client.queue("calc")
    assert await calc.call({"x": 0}, timeout=20) == 0  # pool and subscription exist
    before = len(await raw.client_list())
    assert await subscribers(raw) == 1
    mids = [f"w{i}-{uuid.uuid4().hex}" for i in range(200)]
    results: dict[str, Any] = {}

    async def wait(mid: str) -> None:
        results[mid] = await calc.get_result(mid, timeout=30)

    hub = client._results
    assert hub is not None
    async with anyio.create_task_group() as tg:
        for mid in mids:
            tg.start_soon(wait, mid)
        await wait_until(lambda: hub.waiting == 200, what="200 waiters")
        # Every waiter has checked its stored result and waits: no connection each.
        await wait_until(lambda: not hub._unchecked, what="the waiters' checks")
        during = len(await raw.client_list())
        assert during - before <= 1, f"{during - before} more connections for 200 waiters"
        assert await subscribers(raw) == 1
        for i, mid in enumerate(mids):
            await calc.send_message({"x": i}, message_id=mid)
    assert results == {mid: 2 * i for i, mid in enumerate(mids)}
    assert hub.waiting == 0
    await client.aclose()
    await wait_until(lambda: _no_subscribers(raw), what="the subscription to close")


async def _no_subscribers(raw: aioredis.Redis) -> bool:
    return await subscribers(raw) == 0


async def test_a_result_stored_before_the_waiter_came_is_found(
    client: LeanMQ, redis_server: RedisServer, app_prefix: str
) -> None:
    calc = client.queue("calc")
    mid = f"early-{uuid.uuid4().hex}"
    await calc.send_message({"x": 50}, message_id=mid)
    await wait_until(lambda: _stored(client, calc.keys.result(mid)), what="the result")
    assert await calc.get_result(mid, timeout=5) == 100


async def _stored(mq: LeanMQ, key: str) -> bool:
    return bool(await mq.redis.exists(key))


# -- argument checks ------------------------------------------------------------------------


async def test_bad_arguments_are_refused(mq: LeanMQ) -> None:
    queue = mq.queue("checks")

    async def handle(data: Any) -> Any:
        return data

    with pytest.raises(ConfigurationError, match="result_ttl"):
        queue.handler(result_ttl=0)(handle)
    with pytest.raises(ConfigurationError, match="timeout"):
        await queue.call({"x": 1}, timeout=-1)
    with pytest.raises(ConfigurationError, match="message_id"):
        await queue.get_result("", timeout=1)
    with pytest.raises(TimeoutError):
        await queue.get_result("never-sent", timeout=0.05)


async def test_a_broken_subscription_is_remade_and_nothing_is_missed(
    client: LeanMQ, raw: aioredis.Redis
) -> None:
    calc = client.queue("calc")
    mid = f"kill-{uuid.uuid4().hex}"
    results: list[Any] = []

    async def wait() -> None:
        results.append(await calc.get_result(mid, timeout=30))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await wait_until(lambda: _subscribed_waiters(client) == 1, what="a subscribed waiter")
        await raw.client_kill_filter(_type="pubsub")
        # Stored while the subscription is down (or being re-made): found by the check.
        await calc.send_message({"x": 8}, message_id=mid)
    assert results == [16]
    assert await subscribers(raw) == 1


def _subscribed_waiters(mq: LeanMQ) -> int:
    hub = mq._results
    return hub.waiting if hub is not None and hub._ready.is_set() else 0


async def test_a_cancelled_reader_hands_on_and_closing_ends_the_waits(
    client: LeanMQ, raw: aioredis.Redis
) -> None:
    calc = client.queue("calc")
    first, second = f"c1-{uuid.uuid4().hex}", f"c2-{uuid.uuid4().hex}"
    got: list[Any] = []

    async def wait(mid: str) -> None:
        got.append(await calc.get_result(mid, timeout=30))

    async with anyio.create_task_group() as tg:
        reader = anyio.CancelScope()
        tg.start_soon(_in_scope, reader, wait, first)
        await wait_until(lambda: _subscribed_waiters(client) == 1, what="the reader")
        tg.start_soon(wait, second)
        await wait_until(lambda: _subscribed_waiters(client) == 2, what="two waiters")
        reader.cancel()  # the first waiter, reading for both, goes away mid-read
        await wait_until(lambda: _subscribed_waiters(client) <= 1, what="the cancellation")
        await calc.send_message({"x": 2}, message_id=second)
    assert got == [4]

    failures: list[BaseException] = []

    async def wait_past_close() -> None:
        try:
            await calc.get_result(f"never-{uuid.uuid4().hex}", timeout=30)
        except Exception as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_past_close)
        await wait_until(lambda: _subscribed_waiters(client) == 1, what="a waiter")
        await client.aclose()
    assert len(failures) == 1 and "closed" in str(failures[0])
    await wait_until(lambda: _no_subscribers(raw), what="the subscription to close")


async def _in_scope(scope: anyio.CancelScope, func: Any, *args: Any) -> None:
    with scope:
        await func(*args)


async def test_a_message_dead_lettered_unrun_after_max_deliveries_reaches_its_waiter(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    # In process: a consumer that "died" holding the message stands for the crashes.
    poison, _ = await mq.create_queue_pair("poison")

    @poison.handler(result_ttl=60, max_deliveries=1, visibility_timeout=0.1)
    async def never(data: Any) -> None:
        raise AssertionError("a message over max_deliveries is not run")

    mid = f"poison-{uuid.uuid4().hex}"
    await poison.send_message({"x": 1}, message_id=mid)
    assert await read_as(raw, poison.consumer_group, "ghost", poison.stream, 1)
    async with mq.worker(reclaim_interval=0.05):
        with pytest.raises(DeadLetteredError) as caught:
            await poison.get_result(mid, timeout=20)
    assert caught.value.error_type == "MaxDeliveriesExceeded"
    assert "delivered 2 times" in caught.value.reason
