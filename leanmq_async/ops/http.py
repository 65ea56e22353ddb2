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

from typing import TYPE_CHECKING
from urllib.parse import unquote

from leanmq_async.ops.admin_api import AdminAPI
from leanmq_async.ops.health import HealthThresholds
from leanmq_async.ops.http_request import (
    MAX_BODY,
    split_list,
)
from leanmq_async.ops.http_request import Receive as Receive
from leanmq_async.ops.http_request import Response as Response
from leanmq_async.ops.http_request import Scope as Scope
from leanmq_async.ops.http_request import Send as Send

if TYPE_CHECKING:
    from aiohttp import web

    from leanmq_async.client import LeanMQ
    from leanmq_async.ops.metrics import PrometheusMetrics

__all__ = ["AdminAPI", "admin_app", "aiohttp_admin_app"]


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
        segments = [unquote(p) for p in split_list(tail)]
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
