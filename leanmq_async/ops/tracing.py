"""OpenTelemetry tracing: the trace context travels in message headers to the handler.

Needs the ``tracing`` extra (``pip install "leanmq-async[tracing]"``: opentelemetry-api;
configure an SDK as usual)::

    tracing = OpenTelemetryTracing()
    mq = LeanMQ(url, header_providers=[tracing.inject_headers])   # producers
    async with mq.worker(observers=[tracing]):                    # consumers
        ...

A send made inside a span carries its context (W3C ``traceparent``, via the globally
configured propagator) as message headers; the worker runs each handler call in a
CONSUMER span, ``"<queue> process"``, child of that context, with the attributes
``messaging.system`` (``redis``), ``messaging.destination.name`` (the queue),
``messaging.message.id``, ``messaging.consumer.group.name`` and
``messaging.message.delivery_count``. A handler that raises marks its span as an error.
Spans the handler starts are children of the consumer span.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace

from leanmq_async._version import __version__
from leanmq_async.worker.observer import WorkerObserver

if TYPE_CHECKING:
    from leanmq_async.message import Message
    from leanmq_async.queue import Queue
    from leanmq_async.worker.runner import HandlerRunner

__all__ = ["OpenTelemetryTracing", "inject_trace_headers"]


def inject_trace_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the current trace context (``traceparent``, …), as a new dict."""
    carrier: dict[str, str] = dict(headers) if headers else {}
    propagate.inject(carrier)
    return carrier


class OpenTelemetryTracing(WorkerObserver):
    """Trace-context propagation for producers, CONSUMER spans around handlers."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("leanmq_async", __version__, tracer_provider=tracer_provider)

    def __repr__(self) -> str:
        return f"<OpenTelemetryTracing tracer={self.tracer!r}>"

    def inject_headers(self, queue: Queue) -> dict[str, str]:
        """A ``header_providers`` entry: the current trace context as headers."""
        return inject_trace_headers()

    def handler_context(
        self, runner: HandlerRunner, message: Message[Any]
    ) -> AbstractAsyncContextManager[Any]:
        return self._span(runner, message)

    @asynccontextmanager
    async def _span(self, runner: HandlerRunner, message: Message[Any]) -> AsyncIterator[Any]:
        parent = propagate.extract(message.headers) if message.headers else None
        with self.tracer.start_as_current_span(
            f"{message.queue} process",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "process",
                "messaging.destination.name": message.queue,
                "messaging.consumer.group.name": runner.group,
                "messaging.message.id": message.message_id,
                "messaging.message.delivery_count": message.delivery_count,
                "leanmq.attempt": message.attempt,
                "leanmq.stream_id": message.id,
            },
        ) as span:
            yield span
