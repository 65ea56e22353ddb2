"""The admin HTTP API: ASGI (httpx.ASGITransport, mounted in FastAPI) and the aiohttp adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fastapi import FastAPI

from leanmq_async import LeanMQ, Queue
from leanmq_async.ops import HealthThresholds, admin_app, aiohttp_admin_app
from leanmq_async.testing import free_port

pytestmark = pytest.mark.anyio

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def orders(mq: LeanMQ) -> tuple[Queue, Queue]:
    return await mq.create_queue_pair("orders")


@pytest.fixture
async def client(mq: LeanMQ) -> AsyncIterator[httpx.AsyncClient]:
    app = admin_app(mq, token=TOKEN, thresholds=HealthThresholds(dlq_warning=1, dlq_critical=3))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin", headers=AUTH) as c:
        yield c


async def fill(queue: Queue, dead: int = 2) -> list[str]:
    """``dead`` dead letters (their DLQ ids returned), 1 pending, 3 waiting."""
    await queue.send_messages([{"n": i} for i in range(dead + 4)])
    msgs = await queue.get_messages(count=dead + 1, consumer_id="stuck")
    await queue.move_to_dlq([m.id for m in msgs[:dead]], "invalid foreign key")
    return [m.id for m in await queue.dead_letter_queue().peek_messages(100)]


async def test_dashboard_page(client: httpx.AsyncClient) -> None:
    r = await client.get("/", headers={"Authorization": ""})  # the static page needs no token
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.text
    assert "<title>leanmq queues</title>" in page
    assert '"Bearer " + token' in page and "sessionStorage" in page  # signs in, header only
    assert 'params.delete("token")' in page  # a ?token= in the URL is dropped, never used
    assert 'api("GET", "stats")' in page and "setInterval(refresh, 2000)" in page
    assert "window.confirm" in page  # destructive buttons ask first
    assert "innerHTML" not in page  # data is put in the page as text only
    assert (await client.get("/index.html")).status_code == 200
    assert (await client.post("/")).status_code == 405


async def test_token_is_required(client: httpx.AsyncClient, orders: tuple[Queue, Queue]) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
    ):
        for method, url in (
            ("GET", "/health"),
            ("GET", "/stats"),
            ("GET", "/queues"),
            ("GET", "/dlq/orders"),
            ("DELETE", "/dlq/orders?confirm=true"),
            ("DELETE", "/clear/orders?confirm=true"),
            ("POST", "/cleanup?max_age_hours=0"),
        ):
            r = await client.request(method, url, headers=headers)
            assert r.status_code == 401, (method, url, headers)
            assert r.json() == {"error": "missing or wrong bearer token"}
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert (await client.get("/stats", headers={"Authorization": f"bearer {TOKEN}"})).is_success


async def test_without_token_the_host_app_guards(mq: LeanMQ) -> None:
    transport = httpx.ASGITransport(app=admin_app(mq))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
        assert (await c.get("/health")).status_code == 200
    assert "host app's auth" in repr(admin_app(mq))
    with pytest.raises(ValueError, match="token"):
        admin_app(mq, token="")


async def test_health_status_codes(client: httpx.AsyncClient, orders: tuple[Queue, Queue]) -> None:
    r = await client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    await fill(orders[0], dead=2)  # DLQ 2 > 1: warning
    r = await client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "warning"
    await fill(orders[0], dead=2)  # DLQ 4 > 3: critical
    r = await client.get("/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "critical" and body["issues"][0]["check"] == "dlq"


async def test_unreachable_redis(orders: tuple[Queue, Queue]) -> None:
    async with LeanMQ(f"redis://127.0.0.1:{free_port()}/0", prefix="x:") as down:
        transport = httpx.ASGITransport(app=admin_app(down))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
            r = await c.get("/health")
            assert r.status_code == 503 and r.json()["redis"] is False
            r = await c.get("/stats")
            assert r.status_code == 503 and "unreachable" in r.json()["error"]


async def test_stats_and_queues(client: httpx.AsyncClient, orders: tuple[Queue, Queue]) -> None:
    await fill(orders[0])
    r = await client.get("/stats")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    first = r.json()
    (q,) = first["queues"]
    assert (q["name"], q["length"], q["pending"], q["lag"], q["dlq_length"]) == (
        "orders",
        6,
        1,
        3,
        2,
    )
    assert first["window_s"] is None
    await orders[0].send_messages(range(3))
    second = (await client.get("/stats")).json()  # the app's sampler: rates from now on
    assert second["window_s"] > 0 and second["queues"][0]["enqueued_per_s"] > 0
    r = await client.get("/queues")
    assert [(i["name"], i["message_count"]) for i in r.json()] == [("orders", 9), ("orders:dlq", 2)]
    assert (await client.get("/stats/x")).status_code == 404
    assert (await client.post("/stats")).status_code == 405
    assert (await client.post("/stats")).headers["allow"] == "GET"


async def test_dlq_list_and_show(client: httpx.AsyncClient, orders: tuple[Queue, Queue]) -> None:
    ids = await fill(orders[0])
    r = await client.get("/dlq/orders")
    assert r.status_code == 200
    body = r.json()
    assert body["queue"] == "orders" and body["count"] == 2
    assert [m["id"] for m in body["messages"]] == ids
    assert body["messages"][0]["dead_letter"]["reason"] == "invalid foreign key"
    assert body["messages"][0]["data"] == {"n": 0}
    r = await client.get("/dlq/orders", params={"count": 1, "start": ids[1]})
    assert [m["id"] for m in r.json()["messages"]] == [ids[1]]
    r = await client.get(f"/dlq/orders/{ids[1]}")
    assert r.status_code == 200 and r.json()["data"] == {"n": 1}
    r = await client.get("/dlq/orders/1-0")
    assert r.status_code == 404 and "no message 1-0" in r.json()["error"]
    assert (await client.get("/dlq/missing")).status_code == 404
    for bad in ({"count": "x"}, {"count": 0}, {"count": 5000}, {"start": "nope"}):
        r = await client.get("/dlq/orders", params=bad)
        assert r.status_code == 400 and r.json()["error"], bad
    assert (await client.get("/dlq/bad name")).status_code == 400
    assert (await client.get("/dlq")).status_code == 404
    r = await client.put("/dlq/orders")
    assert r.status_code == 405 and r.headers["allow"] == "GET, DELETE"
    # Listing consumed nothing.
    assert (await orders[1].get_info()).pending_messages == 0


async def test_requeue(
    client: httpx.AsyncClient, orders: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = orders
    ids = await fill(queue, dead=3)
    r = await client.post("/dlq/orders/requeue?dry_run=true", json={"ids": [ids[0], "1-0"]})
    assert r.status_code == 200
    assert r.json() == {
        "queue": "orders",
        "dry_run": True,
        "requeued": [ids[0]],
        "skipped": [{"id": "1-0", "reason": "not in the dead-letter queue"}],
        "count": 1,
    }
    assert await raw.xlen(dlq.stream) == 3
    r = await client.post("/dlq/orders/requeue", json={"ids": [ids[0]]})
    assert r.json()["requeued"] == [ids[0]] and not r.json()["dry_run"]
    assert await raw.xlen(dlq.stream) == 2 and await raw.xlen(queue.stream) == 8
    r = await client.post("/dlq/orders/requeue", json={"all": True})
    assert r.json()["requeued"] == ids[1:]
    assert await raw.xlen(dlq.stream) == 0 and await raw.xlen(queue.stream) == 10
    for body in (
        b"not json",
        b"",
        b"[1]",
        b'{"ids": "1-0"}',
        b'{"ids": [1]}',
        b'{"all": "yes"}',
        b'{"all": true, "ids": ["1-0"]}',
        b"{}",
        b'{"ids": ["nope"]}',
    ):
        r = await client.post("/dlq/orders/requeue", content=body)
        assert r.status_code == 400 and r.json()["error"], body
    r = await client.post("/dlq/orders/requeue?dry_run=maybe", json={"all": True})
    assert r.status_code == 400 and "dry_run" in r.json()["error"]
    r = await client.post("/dlq/missing/requeue", json={"all": True})
    assert r.status_code == 404
    r = await client.post("/dlq/orders/requeue", content=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413


async def test_process_dlq(
    client: httpx.AsyncClient, orders: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = orders
    ids = await fill(queue, dead=3)
    r = await client.post("/process-dlq/orders?dry_run=true")
    assert r.status_code == 200 and r.json()["requeued"] == ids and r.json()["dry_run"]
    assert await raw.xlen(dlq.stream) == 3
    r = await client.post("/process-dlq/orders?dry_run=false")
    assert r.json()["count"] == 3 and await raw.xlen(dlq.stream) == 0
    assert await raw.xlen(queue.stream) == 10
    assert (await client.get("/process-dlq/orders")).status_code == 405
    assert (await client.post("/process-dlq/missing")).status_code == 404


async def test_purge_dlq_needs_confirm(
    client: httpx.AsyncClient, orders: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    _, dlq = orders
    await fill(orders[0])
    for query in ("", "?confirm=false", "?confirm=0"):
        r = await client.delete("/dlq/orders" + query)
        assert r.status_code == 400 and "confirm=true" in r.json()["error"]
    assert await raw.xlen(dlq.stream) == 2
    r = await client.delete("/dlq/orders?confirm=true")
    assert r.status_code == 200 and r.json() == {"queue": "orders", "purged": 2}
    assert await raw.xlen(dlq.stream) == 0


async def test_clear_needs_confirm(
    client: httpx.AsyncClient, orders: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = orders
    await fill(queue)
    await queue.send_message("later", delay=3600)
    r = await client.delete("/clear/orders?include_dlq=true")
    assert r.status_code == 400
    assert await raw.xlen(queue.stream) == 6
    r = await client.delete("/clear/orders?confirm=true")
    assert r.json() == {"queue": "orders", "messages": 6, "delayed": 1, "dead_letters": None}
    assert await raw.xlen(dlq.stream) == 2 and await raw.zcard(queue.keys.delayed) == 0
    r = await client.delete("/clear/orders?include_dlq=true&confirm=true")
    assert r.json()["dead_letters"] == 2 and await raw.xlen(dlq.stream) == 0
    assert (await client.delete("/clear/orders?confirm=yes&include_dlq=x")).status_code == 400
    assert (await client.delete("/clear/missing?confirm=true")).status_code == 404
    assert (await client.delete("/clear/orders:dlq?confirm=true")).status_code == 400


async def test_cleanup(
    client: httpx.AsyncClient, orders: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, _ = orders
    await queue.send_messages(range(5))
    msgs = await queue.get_messages(count=3)
    await queue.acknowledge_messages([m.id for m in msgs[:2]])
    r = await client.post("/cleanup?max_age_hours=24")
    assert r.json() == {"max_age_hours": 24.0, "trimmed": {}, "total": 0, "errors": {}}
    r = await client.post("/cleanup?max_age_hours=0")
    assert r.json()["trimmed"] == {"orders": 2} and await raw.xlen(queue.stream) == 3
    for query in (
        "",
        "?max_age_hours=",
        "?max_age_hours=-1",
        "?max_age_hours=abc",
        "?max_age_hours=nan",
    ):
        r = await client.post("/cleanup" + query)
        assert r.status_code == 400 and "max_age_hours" in r.json()["error"], query
    assert (await client.get("/cleanup?max_age_hours=1")).status_code == 405


async def test_force_process(
    client: httpx.AsyncClient, orders: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, _ = orders
    await fill(queue)  # one pending message held by "stuck"
    r = await client.post("/force-process/orders?batch_size=10")
    assert r.json()["candidates"] == []  # idle less than 60 s
    r = await client.post("/force-process/orders?batch_size=10&min_idle=0&dry_run=true")
    (candidate,) = r.json()["candidates"]
    assert candidate["consumer"] == "stuck" and r.json()["redelivered"] == []
    r = await client.post("/force-process/orders?batch_size=10&min_idle=0")
    assert r.json()["redelivered"] == [candidate["id"]]
    assert (await queue.get_info()).pending_messages == 0
    assert await raw.xlen(queue.stream) == 7  # the redelivered copy
    for query in ("batch_size=abc", "batch_size=0", "batch_size=1.5", "min_idle=-3"):
        r = await client.post("/force-process/orders?" + query)
        assert r.status_code == 400, query
    assert (await client.post("/force-process/missing")).status_code == 404


async def test_unknown_paths(client: httpx.AsyncClient) -> None:
    for url in ("/nope", "/clear", "/force-process"):
        r = await client.post(url)
        assert r.status_code in (404, 405) and r.json()["error"]


async def test_mounted_in_fastapi_with_slashes_in_names(mq: LeanMQ) -> None:
    queue, _ = await mq.create_queue_pair("flights/live_points")
    ids = await fill(queue)
    app = FastAPI()
    app.mount("/admin/queue", admin_app(mq))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
        r = await c.get("/admin/queue/health")
        assert r.status_code == 200 and "flights/live_points" in r.json()["queues"]
        r = await c.get("/admin/queue/dlq/flights%2Flive_points")
        assert r.status_code == 200 and r.json()["count"] == 2
        r = await c.get("/admin/queue/dlq/flights/live_points")  # unencoded works too
        assert r.json()["count"] == 2
        r = await c.get(f"/admin/queue/dlq/flights%2Flive_points/{ids[0]}")
        assert r.json()["id"] == ids[0]
        r = await c.post("/admin/queue/process-dlq/flights%2Flive_points?dry_run=true")
        assert r.json()["count"] == 2
        r = await c.get("/admin/queue/")
        assert r.status_code == 200 and "leanmq queues" in r.text


async def test_lifespan_is_answered(mq: LeanMQ) -> None:
    app = admin_app(mq)
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- aiohttp ------------------------------------------------------------------------------


@pytest.fixture
async def aio(mq: LeanMQ) -> AsyncIterator[TestClient[Any, Any]]:
    app = aiohttp_admin_app(mq, token=TOKEN)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_aiohttp_adapter(
    aio: TestClient[Any, Any], orders: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    queue, dlq = orders
    ids = await fill(queue)
    page = await aio.get("/")
    assert page.status == 200 and "leanmq queues" in await page.text()
    r = await aio.get("/stats")
    assert r.status == 401 and (await r.json())["error"]
    r = await aio.get("/health", headers=AUTH)
    assert r.status == 200 and (await r.json())["status"] == "ok"
    r = await aio.get("/stats", headers=AUTH)
    assert (await r.json())["queues"][0]["dlq_length"] == 2
    r = await aio.get(f"/dlq/orders/{ids[0]}", headers=AUTH)
    assert (await r.json())["data"] == {"n": 0}
    r = await aio.post("/dlq/orders/requeue?dry_run=true", json={"all": True}, headers=AUTH)
    assert (await r.json())["requeued"] == ids
    r = await aio.delete("/dlq/orders", headers=AUTH)
    assert r.status == 400
    r = await aio.post("/dlq/orders/requeue", json={"ids": [ids[0]]}, headers=AUTH)
    assert (await r.json())["requeued"] == [ids[0]] and await raw.xlen(dlq.stream) == 1
    r = await aio.delete("/dlq/orders?confirm=true", headers=AUTH)
    assert (await r.json())["purged"] == 1 and await raw.xlen(dlq.stream) == 0
    r = await aio.post("/dlq/orders/requeue", data=b"nope", headers=AUTH)
    assert r.status == 400


async def test_aiohttp_subapp(mq: LeanMQ) -> None:
    queue, _ = await mq.create_queue_pair("a/b")
    await fill(queue)
    root = web.Application()
    root.add_subapp("/admin/", aiohttp_admin_app(mq))
    async with TestClient(TestServer(root)) as c:
        r = await c.get("/admin/dlq/a%2Fb")
        assert r.status == 200 and (await r.json())["count"] == 2
        r = await c.get("/admin/health")
        assert (await r.json())["queues"]["a/b"] == "ok"
        r = await c.get("/admin/")
        assert r.status == 200
