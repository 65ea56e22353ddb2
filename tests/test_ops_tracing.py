"""OpenTelemetry tracing: trace context in message headers, CONSUMER spans around handlers."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra plus opentelemetry-sdk")
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from leanmq_async import LeanMQ, Message
from leanmq_async.ops.tracing import OpenTelemetryTracing, inject_trace_headers
from tests.worker_apps.common import wait_until

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> OpenTelemetryTracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OpenTelemetryTracing(provider)


async def test_handler_span_is_a_child_of_the_producer_span(
    mq: LeanMQ, tracing: OpenTelemetryTracing, exporter: InMemorySpanExporter
) -> None:
    mq.header_providers.append(tracing.inject_headers)
    queue = mq.queue("orders")
    seen: list[Any] = []

    @queue.handler
    async def handle(data: dict[str, int]) -> None:  # takes the payload, not the Message
        seen.append((data["n"], trace.get_current_span().get_span_context()))

    with tracing.tracer.start_as_current_span("checkout") as producer:
        await queue.send_message({"n": 1}, headers={"tenant": "acme"})
    await queue.send_message({"n": 2})  # outside any span: no trace headers, a root span
    (sent_with, sent_without) = await queue.peek_messages(2)
    assert "traceparent" in sent_with.headers and sent_with.headers["tenant"] == "acme"
    assert sent_without.headers == {}

    async with mq.worker(observers=[tracing], **FAST):
        await wait_until(lambda: len(seen) == 2, what="both messages handled")

    finished = exporter.get_finished_spans()
    assert sorted(s.name for s in finished) == ["checkout", "orders process", "orders process"]
    consumer = [s for s in finished if s.name == "orders process"]
    child = next(
        s for s in consumer if s.attributes["messaging.message.id"] == sent_with.message_id
    )
    root = next(s for s in consumer if s is not child)
    ctx = producer.get_span_context()
    assert child.kind == trace.SpanKind.CONSUMER
    assert child.context.trace_id == ctx.trace_id
    assert child.parent is not None and child.parent.span_id == ctx.span_id
    assert root.parent is None and root.context.trace_id != ctx.trace_id
    assert child.attributes["messaging.system"] == "redis"
    assert child.attributes["messaging.destination.name"] == "orders"
    assert child.attributes["messaging.consumer.group.name"] == "orders-group"
    # The handler ran inside its span.
    handler_ctx = dict(seen)[1]
    assert handler_ctx.span_id == child.context.span_id


async def test_failed_handler_marks_its_span(
    mq: LeanMQ, tracing: OpenTelemetryTracing, exporter: InMemorySpanExporter
) -> None:
    queue = mq.queue("orders")
    calls: list[str] = []

    @queue.handler(max_retries=0)
    async def handle(message: Message[Any]) -> None:
        calls.append(message.message_id)
        raise ValueError("bad order")

    await queue.send_message({"n": 1}, headers=inject_trace_headers({"a": "b"}))
    async with mq.worker(observers=[tracing], **FAST) as worker:
        await wait_until(lambda: worker.stats.dead_lettered == 1, what="dead-lettered")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.attributes["messaging.message.id"] == calls[0]
    assert any(e.name == "exception" for e in span.events)


async def test_header_providers_reach_every_send_path(mq: LeanMQ) -> None:
    calls: list[str] = []

    def provider(queue: Any) -> dict[str, str]:
        calls.append(queue.name)
        return {"x-from": "provider", "x-both": "provider"}

    mq.header_providers.append(provider)
    queue = mq.queue("orders")
    await queue.send_message(1, headers={"x-both": "caller"})
    await queue.send_messages([2, 3], ttl=60)
    async with mq.transaction() as tx:
        tx.send_message(queue, 4)
    assert calls == ["orders"] * 4
    messages = await queue.peek_messages(10)
    assert [m.data for m in messages] == [1, 2, 3, 4]
    assert messages[0].headers == {"x-from": "provider", "x-both": "caller"}  # the caller wins
    assert all(m.headers == {"x-from": "provider", "x-both": "provider"} for m in messages[1:])
