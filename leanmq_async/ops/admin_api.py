"""The admin endpoints: what each route of the admin HTTP API answers, over one client."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from leanmq_async.exceptions import (
    ConfigurationError,
    LeanMQConnectionError,
    LeanMQError,
    QueueError,
    QueueNotFoundError,
)
from leanmq_async.ops import dlq_tools
from leanmq_async.ops.cron_list import collect_cron
from leanmq_async.ops.health import HealthThresholds, check_health
from leanmq_async.ops.http_request import (
    HTTPError,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    asgi_segments,
    dashboard_page,
    json_response,
    looks_like_id,
    read_body,
)
from leanmq_async.ops.stats_sampler import StatsSampler

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.ops.metrics import PrometheusMetrics


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
        request = Request(method, segments, query, headers, body)
        try:
            return await self._route(request)
        except HTTPError as exc:
            response = json_response(exc.status, {"error": exc.message})
            response.headers.update(exc.headers)
            return response
        except dlq_tools.ConfirmationRequiredError as exc:
            return json_response(400, {"error": f"{exc}: add ?confirm=true"})
        except QueueNotFoundError as exc:
            return json_response(404, {"error": str(exc)})
        except (ConfigurationError, QueueError) as exc:
            return json_response(400, {"error": str(exc)})
        except LeanMQConnectionError as exc:
            return json_response(503, {"error": str(exc)})
        except LeanMQError as exc:
            self.mq.log.error("admin_request_failed", path="/".join(segments), error=str(exc))
            return json_response(500, {"error": str(exc)})

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise HTTPError(
                401, "missing or wrong bearer token", {"www-authenticate": 'Bearer realm="leanmq"'}
            )

    async def _route(self, r: Request) -> Response:
        seg = r.segments
        if not seg or seg == ["index.html"]:
            self._allow(r, "GET")
            if self._page is None:
                self._page = dashboard_page()
            return Response(
                200,
                self._page,
                {"content-type": "text/html; charset=utf-8", "cache-control": "no-store"},
            )
        self._authorize(r)
        head, rest = seg[0], seg[1:]
        if head in ("health", "stats", "queues", "cleanup", "metrics", "cron") and rest:
            raise HTTPError(404, f"no such endpoint: /{'/'.join(seg)}")
        if head == "health":
            self._allow(r, "GET")
            health = await check_health(self.mq, self.thresholds)
            return json_response(503 if health.status == "critical" else 200, health)
        if head == "stats":
            self._allow(r, "GET")
            return json_response(200, await self.sampler.collect())
        if head == "queues":
            self._allow(r, "GET")
            return json_response(200, await self.mq.list_queues())
        if head == "cron":  # periodic jobs (issue 16)
            self._allow(r, "GET")
            return json_response(200, await collect_cron(self.mq))
        if head == "metrics":
            self._allow(r, "GET")
            if self.metrics is None:
                raise HTTPError(404, "no metrics: pass metrics=PrometheusMetrics(...)")
            await self.metrics.collect(self.mq)
            # Here: ops.metrics needs the optional prometheus-client ([metrics] extra).
            from leanmq_async.ops.metrics import CONTENT_TYPE_LATEST

            return Response(
                200,
                self.metrics.exposition(),
                {"content-type": CONTENT_TYPE_LATEST, "cache-control": "no-store"},
            )
        if head == "cleanup":
            self._allow(r, "POST")
            hours = r.number("max_age_hours")
            return json_response(200, await dlq_tools.cleanup(self.mq, hours))
        if not rest:
            raise HTTPError(404, f"no such endpoint: /{'/'.join(seg)}")
        if head == "dlq":
            return await self._dlq(r, rest)
        if head == "process-dlq":
            self._allow(r, "POST")
            requeued = await dlq_tools.requeue_dead_letters(
                self.mq, "/".join(rest), all_messages=True, dry_run=r.flag("dry_run")
            )
            return json_response(200, requeued)
        if head == "clear":
            self._allow(r, "DELETE")
            cleared = await dlq_tools.clear_queue(
                self.mq,
                "/".join(rest),
                include_dlq=r.flag("include_dlq"),
                confirm=r.flag("confirm"),
            )
            return json_response(200, cleared)
        if head == "cancel":
            self._allow(r, "POST")
            if len(rest) < 2:
                raise HTTPError(404, "cancel a message with POST /cancel/{queue}/{id}")
            report = await dlq_tools.cancel_message(self.mq, "/".join(rest[:-1]), rest[-1])
            return json_response(200, report)
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
            return json_response(200, forced)
        raise HTTPError(404, f"no such endpoint: /{'/'.join(seg)}")

    async def _dlq(self, r: Request, rest: list[str]) -> Response:
        if r.method == "POST" and len(rest) >= 2 and rest[-1] == "requeue":
            queue = "/".join(rest[:-1])
            data = r.json()
            if not isinstance(data, dict):
                raise HTTPError(400, 'the body must be a JSON object: {"ids": [...]}')
            ids, everything = data.get("ids"), data.get("all", False)
            if not isinstance(everything, bool):
                raise HTTPError(400, '"all" must be true or false')
            if ids is not None and (
                not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
            ):
                raise HTTPError(400, '"ids" must be a list of stream id strings')
            if (ids is None) == (not everything):
                raise HTTPError(400, 'send either "ids": [...] or "all": true')
            report = await dlq_tools.requeue_dead_letters(
                self.mq, queue, ids, all_messages=everything, dry_run=r.flag("dry_run")
            )
            return json_response(200, report)
        if r.method == "DELETE":
            purged = await dlq_tools.purge_dead_letters(
                self.mq, "/".join(rest), confirm=r.flag("confirm")
            )
            return json_response(200, purged)
        if r.method != "GET":
            raise HTTPError(
                405,
                f"method {r.method} not allowed here (requeue: POST /dlq/{{queue}}/requeue)",
                {"allow": "GET, DELETE"},
            )
        if len(rest) >= 2 and looks_like_id(rest[-1]):
            queue, sid = "/".join(rest[:-1]), rest[-1]
            message = await dlq_tools.get_dead_letter(self.mq, queue, sid)
            if message is None:
                raise HTTPError(404, f"no message {sid} in the dead-letter queue of {queue!r}")
            return json_response(200, message)
        queue = "/".join(rest)
        count = int(r.number("count", 50, integer=True))
        if count < 1 or count > 1000:
            raise HTTPError(400, f"count must be between 1 and 1000, got {count}")
        messages = await dlq_tools.list_dead_letters(
            self.mq, queue, count, r.query.get("start") or "-"
        )
        return json_response(200, {"queue": queue, "count": len(messages), "messages": messages})

    @staticmethod
    def _allow(r: Request, *methods: str) -> None:
        if r.method not in methods:
            raise HTTPError(
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
            body = await read_body(receive)
        except HTTPError as exc:
            response = json_response(exc.status, {"error": exc.message})
        else:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1")
                for k, v in scope.get("headers", [])
            }
            response = await self.handle(
                scope.get("method", "GET"), asgi_segments(scope), query, headers, body
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
