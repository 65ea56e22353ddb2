"""The admin HTTP API: a plain ASGI app, an aiohttp adapter, and a dashboard page.

Mount it into an application (no dependency is added)::

    app = FastAPI()                                   # or Starlette
    app.mount("/admin/queue", admin_app(mq, token=os.environ["ADMIN_TOKEN"]))

    web_app.add_subapp("/admin/queue", aiohttp_admin_app(mq, token=...))   # aiohttp

or run it alone with ``leanmq serve``. Endpoints (relative to the mount point):

========  ===============================  ===============================================
GET       ``/``                            the dashboard (static HTML, polls ``/stats``
                                           and ``/health``; asks for the token itself)
GET       ``/health``                      health report; HTTP 200 ok/warning, 503 critical
GET       ``/stats``                       stats of every queue, with rates
GET       ``/queues``                      ``list_queues()``
GET       ``/metrics``                     Prometheus text format, with ``metrics=`` given
                                           (queue gauges refreshed on each scrape)
GET       ``/dlq/{queue}``                 DLQ messages (``?count=50&start=<id>``)
GET       ``/dlq/{queue}/{id}``            one DLQ message (404 if absent)
POST      ``/dlq/{queue}/requeue``         body ``{"ids": [...]}`` or ``{"all": true}``;
                                           ``?dry_run=true`` reports what would move
POST      ``/process-dlq/{queue}``         requeue the whole DLQ (``?dry_run=``)
DELETE    ``/dlq/{queue}?confirm=true``    purge the DLQ
DELETE    ``/clear/{queue}?confirm=true``  clear a queue (``&include_dlq=true``: its DLQ too)
POST      ``/cleanup?max_age_hours=N``     trim acknowledged history older than N hours
POST      ``/force-process/{queue}``       re-deliver stuck pending messages now
                                           (``?batch_size=100&min_idle=60&dry_run=``)
========  ===============================  ===============================================

With ``token`` set every endpoint but the static dashboard page needs
``Authorization: Bearer <token>`` (401 otherwise); without it, protect the mount with the
host application's auth. The token is never read from the URL (it would land in access
logs): the dashboard shows a sign-in prompt on a 401 and keeps the token in the tab's
``sessionStorage``; a ``?token=`` left in its address is removed and not used.
Destructive calls need ``confirm=true`` (400 otherwise). Errors
are JSON ``{"error": "..."}``: 400 bad input, 404 unknown queue or message, 405 wrong
method, 413 body too large, 503 Redis unreachable. A queue name containing ``/`` can be
sent as ``%2F``.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import msgspec

from leanmq_async.exceptions import (
    ConfigurationError,
    LeanMQConnectionError,
    LeanMQError,
    QueueError,
    QueueNotFoundError,
)
from leanmq_async.ops import dlq_tools
from leanmq_async.ops.health import HealthThresholds, check_health
from leanmq_async.ops.stats import StatsSampler

if TYPE_CHECKING:
    from aiohttp import web

    from leanmq_async.client import LeanMQ
    from leanmq_async.ops.metrics import PrometheusMetrics

__all__ = ["AdminAPI", "admin_app", "aiohttp_admin_app"]

MAX_BODY = 1024 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_JSON = "application/json"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(slots=True)
class Response:
    """What a request gets: status, headers and body bytes."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _Request:
    __slots__ = ("body", "headers", "method", "query", "segments")

    def __init__(
        self,
        method: str,
        segments: list[str],
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> None:
        self.method = method.upper()
        self.segments = segments
        self.query = query
        self.headers = headers
        self.body = body

    def flag(self, name: str, default: bool = False) -> bool:
        raw = self.query.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise _HTTPError(400, f"{name} must be true or false, got {raw!r}")

    def number(self, name: str, default: float | None = None, *, integer: bool = False) -> float:
        raw = self.query.get(name)
        if raw is None or raw == "":
            if default is None:
                raise _HTTPError(400, f"the query parameter {name} is required")
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise _HTTPError(400, f"{name} must be {kind}, got {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise _HTTPError(400, f"{name} must be >= 0, got {raw!r}")
        return value

    def json(self) -> Any:
        if not self.body.strip():
            raise _HTTPError(400, 'a JSON body is required, e.g. {"ids": ["1700000000000-0"]}')
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError as exc:
            raise _HTTPError(400, f"invalid JSON body: {exc}") from None


def _encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def _json(status: int, value: Any) -> Response:
    return Response(status, _encode(value), {"content-type": _JSON, "cache-control": "no-store"})


def _dashboard() -> bytes:
    return resources.files("leanmq_async.ops").joinpath("dashboard.html").read_bytes()


class AdminAPI:
    """The admin endpoints over one client; an ASGI application (``await api(scope, …)``).

    The stats sampler lives here, so ``/stats`` reports rates from the second request on
    (over ``window`` seconds). The client is borrowed: close it yourself. With
    ``metrics`` (a :class:`~leanmq_async.ops.metrics.PrometheusMetrics`), ``/metrics``
    serves its registry, queue gauges refreshed first.
    """

    def __init__(
        self,
        mq: LeanMQ,
        token: str | None = None,
        *,
        thresholds: HealthThresholds | None = None,
        window: float = 60.0,
        metrics: PrometheusMetrics | None = None,
    ) -> None:
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigurationError("token must be a non-empty string (or None)")
        self.mq = mq
        self.token = token
        self.thresholds = thresholds or HealthThresholds()
        self.sampler = StatsSampler(mq, window=window)
        self.metrics = metrics
        self._page: bytes | None = None

    def __repr__(self) -> str:
        auth = "token" if self.token else "host app's auth"
        return f"<AdminAPI prefix={self.mq.prefix!r} auth={auth}>"

    # -- transport-free core -------------------------------------------------------------

    async def handle(
        self,
        method: str,
        segments: list[str],
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes = b"",
    ) -> Response:
        """Answer one request (``segments``: the path below the mount, decoded)."""
        request = _Request(method, segments, query, headers, body)
        try:
            return await self._route(request)
        except _HTTPError as exc:
            response = _json(exc.status, {"error": exc.message})
            response.headers.update(exc.headers)
            return response
        except dlq_tools.ConfirmationRequiredError as exc:
            return _json(400, {"error": f"{exc}: add ?confirm=true"})
        except QueueNotFoundError as exc:
            return _json(404, {"error": str(exc)})
        except (ConfigurationError, QueueError) as exc:
            return _json(400, {"error": str(exc)})
        except LeanMQConnectionError as exc:
            return _json(503, {"error": str(exc)})
        except LeanMQError as exc:
            self.mq.log.error("admin_request_failed", path="/".join(segments), error=str(exc))
            return _json(500, {"error": str(exc)})

    def _authorize(self, request: _Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise _HTTPError(
                401, "missing or wrong bearer token", {"www-authenticate": 'Bearer realm="leanmq"'}
            )

    async def _route(self, r: _Request) -> Response:
        seg = r.segments
        if not seg or seg == ["index.html"]:
            self._allow(r, "GET")
            if self._page is None:
                self._page = _dashboard()
            return Response(
                200,
                self._page,
                {"content-type": "text/html; charset=utf-8", "cache-control": "no-store"},
            )
        self._authorize(r)
        head, rest = seg[0], seg[1:]
        if head in ("health", "stats", "queues", "cleanup", "metrics") and rest:
            raise _HTTPError(404, f"no such endpoint: /{'/'.join(seg)}")
        if head == "health":
            self._allow(r, "GET")
            health = await check_health(self.mq, self.thresholds)
            return _json(503 if health.status == "critical" else 200, health)
        if head == "stats":
            self._allow(r, "GET")
            return _json(200, await self.sampler.collect())
        if head == "queues":
            self._allow(r, "GET")
            return _json(200, await self.mq.list_queues())
        if head == "metrics":
            self._allow(r, "GET")
            if self.metrics is None:
                raise _HTTPError(404, "no metrics: pass metrics=PrometheusMetrics(...)")
            await self.metrics.collect(self.mq)
            from leanmq_async.ops.metrics import CONTENT_TYPE_LATEST

            return Response(
                200,
                self.metrics.exposition(),
                {"content-type": CONTENT_TYPE_LATEST, "cache-control": "no-store"},
            )
        if head == "cleanup":
            self._allow(r, "POST")
            hours = r.number("max_age_hours")
            return _json(200, await dlq_tools.cleanup(self.mq, hours))
        if not rest:
            raise _HTTPError(404, f"no such endpoint: /{'/'.join(seg)}")
        if head == "dlq":
            return await self._dlq(r, rest)
        if head == "process-dlq":
            self._allow(r, "POST")
            requeued = await dlq_tools.requeue_dead_letters(
                self.mq, "/".join(rest), all_messages=True, dry_run=r.flag("dry_run")
            )
            return _json(200, requeued)
        if head == "clear":
            self._allow(r, "DELETE")
            cleared = await dlq_tools.clear_queue(
                self.mq,
                "/".join(rest),
                include_dlq=r.flag("include_dlq"),
                confirm=r.flag("confirm"),
            )
            return _json(200, cleared)
        if head == "force-process":
            self._allow(r, "POST")
            forced = await dlq_tools.force_process(
                self.mq,
                "/".join(rest),
                int(r.number("batch_size", 100, integer=True)),
                min_idle=r.number("min_idle", 60.0),
                group=r.query.get("group") or None,
                dry_run=r.flag("dry_run"),
            )
            return _json(200, forced)
        raise _HTTPError(404, f"no such endpoint: /{'/'.join(seg)}")

    async def _dlq(self, r: _Request, rest: list[str]) -> Response:
        if r.method == "POST" and len(rest) >= 2 and rest[-1] == "requeue":
            queue = "/".join(rest[:-1])
            data = r.json()
            if not isinstance(data, dict):
                raise _HTTPError(400, 'the body must be a JSON object: {"ids": [...]}')
            ids, everything = data.get("ids"), data.get("all", False)
            if not isinstance(everything, bool):
                raise _HTTPError(400, '"all" must be true or false')
            if ids is not None and (
                not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
            ):
                raise _HTTPError(400, '"ids" must be a list of stream id strings')
            if (ids is None) == (not everything):
                raise _HTTPError(400, 'send either "ids": [...] or "all": true')
            report = await dlq_tools.requeue_dead_letters(
                self.mq, queue, ids, all_messages=everything, dry_run=r.flag("dry_run")
            )
            return _json(200, report)
        if r.method == "DELETE":
            purged = await dlq_tools.purge_dead_letters(
                self.mq, "/".join(rest), confirm=r.flag("confirm")
            )
            return _json(200, purged)
        if r.method != "GET":
            raise _HTTPError(
                405,
                f"method {r.method} not allowed here (requeue: POST /dlq/{{queue}}/requeue)",
                {"allow": "GET, DELETE"},
            )
        if len(rest) >= 2 and _looks_like_id(rest[-1]):
            queue, sid = "/".join(rest[:-1]), rest[-1]
            message = await dlq_tools.get_dead_letter(self.mq, queue, sid)
            if message is None:
                raise _HTTPError(404, f"no message {sid} in the dead-letter queue of {queue!r}")
            return _json(200, message)
        queue = "/".join(rest)
        count = int(r.number("count", 50, integer=True))
        if count < 1 or count > 1000:
            raise _HTTPError(400, f"count must be between 1 and 1000, got {count}")
        messages = await dlq_tools.list_dead_letters(
            self.mq, queue, count, r.query.get("start") or "-"
        )
        return _json(200, {"queue": queue, "count": len(messages), "messages": messages})

    @staticmethod
    def _allow(r: _Request, *methods: str) -> None:
        if r.method not in methods:
            raise _HTTPError(
                405, f"method {r.method} not allowed here", {"allow": ", ".join(methods)}
            )

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        try:
            body = await _read_body(receive)
        except _HTTPError as exc:
            response = _json(exc.status, {"error": exc.message})
        else:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1")
                for k, v in scope.get("headers", [])
            }
            response = await self.handle(
                scope.get("method", "GET"), _asgi_segments(scope), query, headers, body
            )
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in {
                        **response.headers,
                        "content-length": str(len(response.body)),
                        "x-content-type-options": "nosniff",
                    }.items()
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _HTTPError(413, f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _looks_like_id(text: str) -> bool:
    ms, dash, seq = text.partition("-")
    return bool(dash) and ms.isdigit() and seq.isdigit()


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _asgi_segments(scope: Scope) -> list[str]:
    """The decoded path segments below the mount point (``root_path``).

    Split on the raw path when the server gives it, so ``%2F`` stays inside a segment.
    """
    root = _split(scope.get("root_path", "") or "")
    raw = scope.get("raw_path")
    if raw:
        parts = [unquote(p) for p in _split(raw.decode("latin-1").split("?", 1)[0])]
        # A server behind a proxy may give a raw path without the root path.
        return parts[len(root) :] if parts[: len(root)] == root else parts
    parts = _split(scope.get("path", "/"))
    return parts[len(root) :] if parts[: len(root)] == root else parts


def admin_app(
    mq: LeanMQ,
    token: str | None = None,
    *,
    thresholds: HealthThresholds | None = None,
    window: float = 60.0,
    metrics: PrometheusMetrics | None = None,
) -> AdminAPI:
    """The admin API as an ASGI app: ``app.mount("/admin", admin_app(mq))``."""
    return AdminAPI(mq, token, thresholds=thresholds, window=window, metrics=metrics)


def aiohttp_admin_app(
    mq: LeanMQ,
    token: str | None = None,
    *,
    thresholds: HealthThresholds | None = None,
    window: float = 60.0,
    metrics: PrometheusMetrics | None = None,
) -> web.Application:
    """The admin API as an aiohttp application: ``app.add_subapp("/admin", ...)``."""
    from aiohttp import web

    api = AdminAPI(mq, token, thresholds=thresholds, window=window, metrics=metrics)

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        tail = request.match_info.get("tail", "")
        segments = [unquote(p) for p in _split(tail)]
        response = await api.handle(
            request.method,
            segments,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        headers = dict(response.headers)
        headers["x-content-type-options"] = "nosniff"
        return web.Response(status=response.status, body=response.body, headers=headers)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app
