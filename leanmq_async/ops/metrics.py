"""Prometheus metrics: worker counters and a handler-duration histogram, queue gauges.

Needs the ``metrics`` extra (``pip install "leanmq-async[metrics]"``: prometheus-client)::

    metrics = PrometheusMetrics()                    # registers on prometheus_client.REGISTRY
    mq = LeanMQ(url, observers=[metrics])            # every worker counts, leanmq-worker too
    async with mq.worker():                          # counters and durations, per handler
        ...

``leanmq-worker app:mq --metrics-port 9100`` serves them at ``/metrics`` (see
:mod:`leanmq_async.ops.metrics_server`; with ``--workers N``, process *i* on port 9100+i).

Queue gauges (depth, pending, oldest pending age, lag, DLQ depth, delayed) come from
:func:`~leanmq_async.ops.stats.collect_stats`: refresh them at scrape time (the admin
app's ``/metrics`` with ``admin_app(mq, metrics=metrics)``, or :func:`metrics_asgi_app`
with ``mq``), or in the background with ``await metrics.run(mq, interval=15)``.

Metric names (``namespace`` ``leanmq`` by default), labels ``queue`` and ``group``:

* counters ``leanmq_messages_handled_total``, ``…_failed_total``, ``…_retried_total``,
  ``…_dead_lettered_total``, ``…_expired_total``, ``…_reclaimed_total``;
* histogram ``leanmq_handler_duration_seconds`` (successful and failed attempts);
* gauges (label ``queue``) ``leanmq_queue_depth``, ``leanmq_queue_delayed``,
  ``leanmq_queue_oldest_pending_age_seconds`` (0 when nothing is pending),
  ``leanmq_dlq_depth``; (labels ``queue``, ``group``) ``leanmq_queue_pending``,
  ``leanmq_queue_lag``.

Counters are per worker process, as Prometheus expects (sum them in queries); the gauges
describe Redis, so one scraped process is enough to collect them.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from leanmq_async._extras import require
from leanmq_async._log import get_logger
from leanmq_async.exceptions import ConfigurationError, LeanMQError
from leanmq_async.ops.stats import Stats, collect_stats
from leanmq_async.worker.observer import WorkerObserver

require("prometheus_client", "metrics", "leanmq_async.ops.metrics")

from prometheus_client import (  # noqa: E402 - after the check that it is installed
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.worker.runner import HandlerRunner

__all__ = ["CONTENT_TYPE_LATEST", "PrometheusMetrics", "metrics_asgi_app"]

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_log = get_logger("leanmq_async.metrics")


@dataclass(frozen=True, slots=True)
class _Collectors:
    """The collectors of one (registry, namespace): registered once, shared after."""

    buckets: tuple[float, ...]
    handled: Counter
    failed: Counter
    retried: Counter
    dead_lettered: Counter
    expired: Counter
    reclaimed: Counter
    duration: Histogram
    depth: Gauge
    delayed: Gauge
    oldest_pending_age: Gauge
    dlq_depth: Gauge
    pending: Gauge
    lag: Gauge


# Per registry (weakly: a dropped registry frees its entry), per namespace.
_REGISTERED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Collectors]] = (
    weakref.WeakKeyDictionary()
)


def _register(
    registry: CollectorRegistry, namespace: str, buckets: tuple[float, ...]
) -> _Collectors:
    labels = ("queue", "group")

    def counter(name: str, doc: str) -> Counter:
        return Counter(name, doc, labels, namespace=namespace, registry=registry)

    def gauge(name: str, doc: str, names: tuple[str, ...] = ("queue",)) -> Gauge:
        return Gauge(name, doc, names, namespace=namespace, registry=registry)

    return _Collectors(
        buckets=buckets,
        handled=counter("messages_handled", "Messages handled and acknowledged."),
        failed=counter("messages_failed", "Handler attempts that raised."),
        retried=counter("messages_retried", "Failed messages scheduled for a retry."),
        dead_lettered=counter("messages_dead_lettered", "Messages moved to the dead-letter queue."),
        expired=counter("messages_expired", "Messages whose TTL ran out unhandled."),
        reclaimed=counter(
            "messages_reclaimed", "Messages claimed from consumers that held them too long."
        ),
        duration=Histogram(
            "handler_duration_seconds",
            "Seconds a handler attempt took (successful or not).",
            labels,
            namespace=namespace,
            registry=registry,
            buckets=buckets,
        ),
        depth=gauge("queue_depth", "Entries in the stream (including unacked history)."),
        delayed=gauge("queue_delayed", "Scheduled messages (delays and retries)."),
        oldest_pending_age=gauge(
            "queue_oldest_pending_age_seconds",
            "Age of the oldest pending message (0 when none is pending).",
        ),
        dlq_depth=gauge("dlq_depth", "Messages in the dead-letter queue."),
        pending=gauge("queue_pending", "Delivered, not acknowledged.", labels),
        lag=gauge("queue_lag", "Entries not delivered to the group yet.", labels),
    )


class PrometheusMetrics(WorkerObserver):
    """Prometheus collectors for one registry; a worker observer too.

    ``registry``: where the metrics are registered (default: prometheus_client's global
    ``REGISTRY``, so an app's existing ``/metrics`` shows them). Instances made for the
    same registry and namespace share one set of collectors (creating a second one does
    not fail with "Duplicated timeseries"); their ``buckets`` must agree. Pass
    ``CollectorRegistry()`` to keep them apart.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "leanmq",
        *,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        wanted = tuple(float(b) for b in buckets)
        known = _REGISTERED.setdefault(self.registry, {})
        shared = known.get(namespace)
        if shared is None:
            shared = known[namespace] = _register(self.registry, namespace, wanted)
        elif shared.buckets != wanted:
            raise ConfigurationError(
                f"PrometheusMetrics for namespace {namespace!r} already exist in this registry "
                f"with buckets {shared.buckets}; pass the same buckets, or another registry "
                "or namespace"
            )
        self.handled = shared.handled
        self.failed = shared.failed
        self.retried = shared.retried
        self.dead_lettered = shared.dead_lettered
        self.expired = shared.expired
        self.reclaimed = shared.reclaimed
        self.duration = shared.duration
        self.depth = shared.depth
        self.delayed = shared.delayed
        self.oldest_pending_age = shared.oldest_pending_age
        self.dlq_depth = shared.dlq_depth
        self.pending = shared.pending
        self.lag = shared.lag
        self._series: dict[Gauge, set[tuple[str, ...]]] = {}

    def __repr__(self) -> str:
        return f"<PrometheusMetrics registry={self.registry!r}>"

    # -- worker observer -----------------------------------------------------------------

    def on_handled(self, runner: HandlerRunner, message_id: str, duration: float) -> None:
        labels = (runner.queue.name, runner.group)
        self.handled.labels(*labels).inc()
        self.duration.labels(*labels).observe(duration)

    def on_failed(
        self, runner: HandlerRunner, message_id: str, error: BaseException, duration: float
    ) -> None:
        labels = (runner.queue.name, runner.group)
        self.failed.labels(*labels).inc()
        self.duration.labels(*labels).observe(duration)

    def on_retried(
        self, runner: HandlerRunner, message_id: str, attempt: int, delay: float
    ) -> None:
        self.retried.labels(runner.queue.name, runner.group).inc()

    def on_dead_lettered(
        self, runner: HandlerRunner, message_id: str, reason: str, error_type: str
    ) -> None:
        self.dead_lettered.labels(runner.queue.name, runner.group).inc()

    def on_expired(self, runner: HandlerRunner, message_id: str) -> None:
        self.expired.labels(runner.queue.name, runner.group).inc()

    def on_reclaimed(self, runner: HandlerRunner, count: int) -> None:
        self.reclaimed.labels(runner.queue.name, runner.group).inc(count)

    # -- queue gauges --------------------------------------------------------------------

    async def collect(self, mq: LeanMQ, queues: Iterable[str] | None = None) -> Stats:
        """Refresh the queue gauges from ``collect_stats(mq)``; return the stats.

        Series of queues (or groups) that no longer exist are removed.
        """
        stats = await collect_stats(mq, queues=queues)
        self.update(stats)
        return stats

    def update(self, stats: Stats) -> None:
        """Set the queue gauges from a :class:`~leanmq_async.ops.stats.Stats` snapshot."""
        values: dict[Gauge, dict[tuple[str, ...], float]] = {
            g: {}
            for g in (
                self.depth,
                self.delayed,
                self.oldest_pending_age,
                self.dlq_depth,
                self.pending,
                self.lag,
            )
        }
        for q in stats.queues:
            key = (q.name,)
            if q.exists:
                values[self.depth][key] = q.length
                values[self.delayed][key] = q.delayed
                values[self.oldest_pending_age][key] = q.oldest_pending_age_s or 0.0
            values[self.dlq_depth][key] = q.dlq_length
            for g in q.groups:
                values[self.pending][(q.name, g.name)] = g.pending
                if g.lag is not None:
                    values[self.lag][(q.name, g.name)] = g.lag
        for gauge, series in values.items():
            for labels, value in series.items():
                gauge.labels(*labels).set(value)
            for gone in self._series.get(gauge, set()) - series.keys():
                gauge.remove(*gone)
            self._series[gauge] = set(series)

    async def run(
        self, mq: LeanMQ, interval: float = 15.0, queues: Iterable[str] | None = None
    ) -> None:
        """Refresh the queue gauges every ``interval`` seconds until cancelled.

        A failed collection (Redis down) is logged and retried at the next interval.
        """
        names = list(queues) if queues is not None else None
        while True:
            try:
                await self.collect(mq, names)
            except LeanMQError as exc:
                _log.warning("metrics_collect_failed", error=str(exc))
            await anyio.sleep(interval)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def metrics_asgi_app(
    metrics: PrometheusMetrics, mq: LeanMQ | None = None
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app answering every GET with the registry's exposition.

    With ``mq``, the queue gauges are refreshed on each scrape first (two round trips);
    if Redis cannot be reached the scrape still answers, with the last values.
    ``app.mount("/metrics", metrics_asgi_app(metrics, mq))``.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            status, body, ctype = 405, b"method not allowed\n", "text/plain; charset=utf-8"
        else:
            if mq is not None:
                try:
                    await metrics.collect(mq)
                except LeanMQError as exc:
                    _log.warning("metrics_collect_failed", error=str(exc))
            status, body, ctype = 200, metrics.exposition(), CONTENT_TYPE_LATEST
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app
