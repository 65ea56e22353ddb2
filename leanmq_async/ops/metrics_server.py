"""A minimal HTTP server for Prometheus scrapes, run as a task of the worker's task group.

``leanmq-worker --metrics-port PORT`` runs it: ``GET /metrics`` answers the registry's
exposition, with the queue gauges refreshed from Redis first (bounded by a timeout: a
scrape while Redis is down still answers, with the last values). No thread: it lives
and ends with the worker's event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from leanmq_async._log import get_logger
from leanmq_async.exceptions import ConfigurationError, LeanMQError
from leanmq_async.ops.metrics import CONTENT_TYPE_LATEST, PrometheusMetrics

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = ["serve_metrics"]

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 10.0
COLLECT_TIMEOUT = 5.0

_log = get_logger("leanmq_async.metrics")


async def serve_metrics(
    metrics: PrometheusMetrics,
    port: int,
    host: str = "0.0.0.0",  # all interfaces: Prometheus scrapes from another host
    mq: LeanMQ | None = None,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled; report the bound port."""
    try:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise ConfigurationError(f"metrics port {host}:{port}: cannot listen ({exc})") from exc
    async with listener:
        bound = int(listener.extra(SocketAttribute.local_port))
        _log.info("metrics_serving", host=host, port=bound, path="/metrics")
        task_status.started(bound)

        async def handle(stream: SocketStream) -> None:
            async with stream:
                try:
                    with anyio.fail_after(REQUEST_TIMEOUT):
                        await _answer(stream, metrics, mq)
                except (TimeoutError, OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                    pass  # a client that went away or sent nothing: nothing to answer

        await listener.serve(handle)


async def _answer(stream: SocketStream, metrics: PrometheusMetrics, mq: LeanMQ | None) -> None:
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        head += await stream.receive()
        if len(head) > MAX_REQUEST_HEAD:
            await _respond(stream, 431, b"request head too large\n")
            return
    method, _, rest = head.split(b"\n", 1)[0].decode("latin-1").partition(" ")
    path = rest.split(" ", 1)[0].split("?", 1)[0]
    if path not in ("/metrics", "/metrics/"):
        await _respond(stream, 404, b"not found: scrape /metrics\n")
        return
    if method not in ("GET", "HEAD"):
        await _respond(stream, 405, b"method not allowed\n")
        return
    if mq is not None:
        with anyio.move_on_after(COLLECT_TIMEOUT) as scope:
            try:
                await metrics.collect(mq)
            except LeanMQError as exc:
                _log.warning("metrics_collect_failed", error=str(exc))
        if scope.cancelled_caught:
            _log.warning("metrics_collect_failed", error=f"timed out after {COLLECT_TIMEOUT}s")
    body = metrics.exposition()
    await _respond(stream, 200, b"" if method == "HEAD" else body, CONTENT_TYPE_LATEST, len(body))


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}


async def _respond(
    stream: SocketStream,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    length: int | None = None,
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        "Connection: close\r\n\r\n"
    )
    await stream.send(head.encode("latin-1") + body)
