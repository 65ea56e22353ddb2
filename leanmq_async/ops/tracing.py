"""OpenTelemetry tracing: the trace context travels in message headers to the handler.

Needs the ``tracing`` extra (``pip install "leanmq-async[tracing]"``: opentelemetry-api;
configure an SDK as usual)::

    tracing = OpenTelemetryTracing()
    mq = LeanMQ(url, observers=[tracing])   # producers inject headers, every worker spans
    async with mq.worker():
        ...

A send made inside a span carries its context (W3C ``traceparent``, via the globally
configured propagator) as message headers; the worker runs each handler call in a
CONSUMER span, ``"<queue> process"``, child of that context, with the attributes
``messaging.system`` (``redis``), ``messaging.destination.name`` (the queue),
``messaging.message.id``, ``messaging.consumer.group.name`` and
``messaging.message.delivery_count``. A handler that raises marks its span as an error.
Spans the handler starts are children of the consumer span.

``leanmq-worker --tracing`` attaches an :class:`OpenTelemetryTracing` and, when no SDK
tracer provider is set yet (``opentelemetry-instrument`` sets one), configures one from
the standard environment (:func:`configure_from_environment`): ``OTEL_SDK_DISABLED``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_EXPORTER`` (``otlp``
by default, needs ``opentelemetry-exporter-otlp``; ``console``; ``none``) and the
exporters' own ``OTEL_EXPORTER_*`` variables.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from leanmq_async._extras import require
from leanmq_async._version import __version__
from leanmq_async.exceptions import ConfigurationError
from leanmq_async.worker.observer import WorkerObserver

require("opentelemetry.trace", "tracing", "leanmq_async.ops.tracing")

from opentelemetry import propagate, trace  # noqa: E402 - after the check that it is installed

if TYPE_CHECKING:
    from leanmq_async.message import Message
    from leanmq_async.queue import Queue
    from leanmq_async.worker.runner import HandlerRunner

__all__ = ["OpenTelemetryTracing", "configure_from_environment", "inject_trace_headers"]


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


def _sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def configure_from_environment() -> Callable[[], None]:
    """Set a global SDK tracer provider from the ``OTEL_*`` environment, unless one is set.

    Returns the function that flushes and shuts it down (a no-op when nothing was set
    up: ``OTEL_SDK_DISABLED=true``, or a provider configured already, e.g. by
    ``opentelemetry-instrument``). Raises :class:`~leanmq_async.exceptions.ConfigurationError`
    with the ``pip install`` to run when the SDK or an exporter is missing.
    """
    if _sdk_disabled():
        return lambda: None
    require("opentelemetry.sdk.trace", "tracing", "leanmq-worker --tracing (opentelemetry-sdk)")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return lambda: None
    provider = TracerProvider()  # its resource reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    for name in (n.strip() for n in names.split(",")):
        if not name or name == "none":
            continue
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            hint = (
                "pip install opentelemetry-exporter-otlp"
                if name.startswith("otlp")
                else "install the package that provides it"
            )
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER={names!r}: no span exporter named {name!r} is "
                f"installed ({hint}), or set OTEL_TRACES_EXPORTER=console|none"
            )
        exporter_class = next(iter(found)).load()
        provider.add_span_processor(BatchSpanProcessor(exporter_class()))
    trace.set_tracer_provider(provider)
    return provider.shutdown
