"""Worker observers and the Prometheus metrics built on them (counters, gauges, /metrics)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

pytest.importorskip("prometheus_client", reason="the metrics extra (prometheus-client)")
from prometheus_client import CollectorRegistry

from leanmq_async import ConfigurationError, LeanMQ, Reject, Retry
from leanmq_async.ops import admin_app
from leanmq_async.ops.metrics import PrometheusMetrics, metrics_asgi_app
from leanmq_async.worker import WorkerSettings
from leanmq_async.worker.observer import WorkerObserver
from tests.worker_apps.common import settled, wait_until

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}
LABELS = {"queue": "orders", "group": "orders-group"}


def no_wait(_retry: int) -> float:
    return 0.01


def value(metrics: PrometheusMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    got = metrics.registry.get_sample_value(f"leanmq_{name}", labels or LABELS)
    return 0.0 if got is None else got


class Recorder(WorkerObserver):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_handled(self, runner: Any, message_id: str, duration: float) -> None:
        assert duration >= 0
        self.events.append(("handled", runner.queue.name, message_id))

    def on_failed(
        self, runner: Any, message_id: str, error: BaseException, duration: float
    ) -> None:
        self.events.append(("failed", message_id, type(error).__name__))

    def on_retried(self, runner: Any, message_id: str, attempt: int, delay: float) -> None:
        self.events.append(("retried", message_id, attempt))

    def on_dead_lettered(self, runner: Any, message_id: str, reason: str, error_type: str) -> None:
        self.events.append(("dead_lettered", message_id, reason, error_type))


class Broken:
    """A duck-typed observer (no base class) whose hook raises: logged, never fatal."""

    def on_handled(self, runner: Any, message_id: str, duration: float) -> None:
        raise RuntimeError("observer bug")


async def test_observer_hooks(mq: LeanMQ, raw: aioredis.Redis) -> None:
    queue = mq.queue("orders")
    tries: dict[str, int] = {}

    @queue.handler(max_retries=1, backoff=no_wait)
    async def handle(data: dict[str, str]) -> None:
        kind = data["kind"]
        tries[kind] = tries.get(kind, 0) + 1
        if kind == "bad":
            raise Reject("no such customer")
        if kind == "flaky" and tries[kind] == 1:
            raise Retry(delay=0.01)

    recorder = Recorder()
    await queue.send_message({"kind": "ok"}, message_id="m-ok")
    await queue.send_message({"kind": "bad"}, message_id="m-bad")
    await queue.send_message({"kind": "flaky"}, message_id="m-flaky")
    async with mq.worker(observers=[recorder, Broken()], **FAST) as worker:
        await wait_until(lambda: worker.stats.handled == 2, what="ok and flaky handled")
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    events = recorder.events
    assert ("handled", "orders", "m-ok") in events
    assert ("handled", "orders", "m-flaky") in events
    assert ("failed", "m-bad", "Reject") in events
    assert ("dead_lettered", "m-bad", "no such customer", "Reject") in events
    assert ("failed", "m-flaky", "Retry") in events
    assert ("retried", "m-flaky", 1) in events
    assert len(events) == 6


async def test_observers_setting() -> None:
    observer = WorkerObserver()
    assert WorkerSettings(observers=[observer]).observers == (observer,)  # type: ignore[arg-type]
    assert WorkerSettings().observers == ()
    with pytest.raises(ConfigurationError):
        WorkerSettings(observers=observer)  # type: ignore[arg-type]


async def test_counters_histogram_and_gauges(mq: LeanMQ, raw: aioredis.Redis) -> None:
    metrics = PrometheusMetrics(CollectorRegistry())
    queue = mq.queue("orders")

    @queue.handler(max_retries=1, backoff=no_wait)
    async def handle(data: dict[str, int]) -> None:
        if data["n"] == 0:
            raise ValueError("boom")  # retried once, then dead-lettered

    await queue.send_messages([{"n": i} for i in range(5)])
    async with mq.worker(observers=[metrics], **FAST) as worker:
        await wait_until(
            lambda: worker.stats.handled == 4 and worker.stats.dead_lettered == 1,
            what="4 handled, 1 dead-lettered",
        )
        await wait_until(lambda: settled(raw, queue.stream, queue.consumer_group), what="acks")
    assert value(metrics, "messages_handled_total") == 4
    assert value(metrics, "messages_failed_total") == 2
    assert value(metrics, "messages_retried_total") == 1
    assert value(metrics, "messages_dead_lettered_total") == 1
    assert value(metrics, "messages_expired_total") == 0
    assert value(metrics, "handler_duration_seconds_count") == 6
    assert value(metrics, "handler_duration_seconds_sum") >= 0

    await queue.send_message({"n": 9})  # waiting, not delivered yet: lag 1
    stats = await metrics.collect(mq)
    assert stats.queue("orders").dlq_length == 1
    assert value(metrics, "dlq_depth", {"queue": "orders"}) == 1
    assert value(metrics, "queue_depth", {"queue": "orders"}) == stats.queue("orders").length
    assert value(metrics, "queue_pending") == 0
    assert value(metrics, "queue_lag") == 1
    assert value(metrics, "queue_oldest_pending_age_seconds", {"queue": "orders"}) == 0

    # A queue that is gone loses its series.
    await mq.delete_queue("orders")
    await metrics.collect(mq)
    assert metrics.registry.get_sample_value("leanmq_dlq_depth", {"queue": "orders"}) is None
    assert metrics.registry.get_sample_value("leanmq_queue_lag", LABELS) is None


async def test_reclaimed_counter(mq: LeanMQ) -> None:
    metrics = PrometheusMetrics(CollectorRegistry(), namespace="leanmq")
    queue, _ = await mq.create_queue_pair("orders")
    handled: list[int] = []

    @queue.handler(visibility_timeout=0.1)
    async def handle(data: dict[str, int]) -> None:
        handled.append(data["n"])

    await queue.send_message({"n": 1})
    assert await queue.get_messages(consumer_id="dead-worker")  # held by a consumer that died
    async with mq.worker(observers=[metrics], reclaim_interval=0.05, **FAST):
        await wait_until(lambda: handled == [1], what="the held message reclaimed and handled")
    assert value(metrics, "messages_reclaimed_total") == 1
    assert value(metrics, "messages_handled_total") == 1


async def test_metrics_endpoints(mq: LeanMQ) -> None:
    metrics = PrometheusMetrics(CollectorRegistry())
    queue, _ = await mq.create_queue_pair("orders")
    await queue.send_message({"n": 1})
    (msg,) = await queue.get_messages()
    await queue.move_to_dlq([msg.id], "invalid")

    app = admin_app(mq, token="t", metrics=metrics)
    auth = {"Authorization": "Bearer t"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://admin"
    ) as c:
        assert (await c.get("/metrics")).status_code == 401
        r = await c.get("/metrics", headers=auth)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert 'leanmq_dlq_depth{queue="orders"} 1.0' in r.text
        assert "# TYPE leanmq_messages_handled_total counter" in r.text
        assert (await c.post("/metrics", headers=auth)).status_code == 405

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=admin_app(mq)), base_url="http://admin"
    ) as c:
        assert (await c.get("/metrics")).status_code == 404  # no metrics= given

    await queue.dead_letter_queue().purge()
    standalone = metrics_asgi_app(metrics, mq)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=standalone), base_url="http://m"
    ) as c:
        r = await c.get("/")
        assert r.status_code == 200
        assert 'leanmq_dlq_depth{queue="orders"} 0.0' in r.text
