"""An aiohttp app with the worker embedded through ``cleanup_ctx``.

    LEANMQ_URL=redis://localhost:6379/0 python examples/aiohttp_app.py
    curl -X POST localhost:8080/orders -H 'content-type: application/json' \\
         -d '{"item": "lamp", "quantity": 2}'
    curl localhost:8080/orders/<order_id>

``POST /orders`` enqueues and answers 202; the handler runs in the same process (the
worker starts with the app and stops gracefully with it) and records each order's status
in a Redis hash, which ``GET /orders/{order_id}`` reads. Settings from the environment:
LEANMQ_URL (default redis://localhost:6379/0), LEANMQ_PREFIX (default "app:").
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from aiohttp import web

from leanmq_async import LeanMQ, Reject
from leanmq_async.worker import Worker

REDIS_URL = os.environ.get("LEANMQ_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("LEANMQ_PREFIX", "app:")

mq = LeanMQ(REDIS_URL, prefix=PREFIX)  # no I/O until the app starts
orders = mq.queue("orders")
STATUS_KEY = f"{PREFIX}order-status"  # hash: order id -> JSON status record
WORKER = web.AppKey("worker", Worker)


class OrderIn(msgspec.Struct, forbid_unknown_fields=True):
    """The request body of ``POST /orders``."""

    item: str
    quantity: int = 1


class Order(msgspec.Struct):
    """What goes through the queue (the handler gets it validated)."""

    order_id: str
    item: str
    quantity: int


PRICES = {"lamp": 30, "mug": 8, "book": 15}


async def record(order_id: str, **status: Any) -> None:
    await mq.redis.hset(STATUS_KEY, order_id, msgspec.json.encode(status))


@orders.handler(concurrency=20, max_retries=3)
async def process_order(order: Order) -> None:
    await record(order.order_id, status="processing", item=order.item)
    await anyio.sleep(0.01)  # pretend to call a payment provider
    price = PRICES.get(order.item)
    if price is None:
        await record(order.order_id, status="rejected", reason=f"unknown item {order.item!r}")
        raise Reject(f"unknown item {order.item!r}")  # dead-lettered at once, no retries
    await record(
        order.order_id,
        status="done",
        item=order.item,
        quantity=order.quantity,
        total=price * order.quantity,
    )


async def leanmq_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the worker with the app; at cleanup stop it gracefully, then close Redis."""
    async with mq, mq.worker() as worker:
        app[WORKER] = worker
        yield


routes = web.RouteTableDef()


@routes.post("/orders")
async def create_order(request: web.Request) -> web.Response:
    try:
        body = msgspec.json.decode(await request.read(), type=OrderIn)
    except msgspec.ValidationError as exc:
        raise web.HTTPUnprocessableEntity(text=str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    if not body.item or body.quantity < 1:
        raise web.HTTPUnprocessableEntity(text="item must be non-empty and quantity >= 1")
    order_id = uuid.uuid4().hex
    await record(order_id, status="queued", item=body.item)
    await orders.send_message(Order(order_id=order_id, item=body.item, quantity=body.quantity))
    return web.json_response({"order_id": order_id, "status": "queued"}, status=202)


@routes.get("/orders/{order_id}")
async def get_order(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"]
    raw = await mq.redis.hget(STATUS_KEY, order_id)
    if raw is None:
        raise web.HTTPNotFound(text="no such order")
    return web.json_response({"order_id": order_id, **msgspec.json.decode(raw)})


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response(await request.app[WORKER].health())


def create_app() -> web.Application:
    app = web.Application()
    app.add_routes(routes)
    app.cleanup_ctx.append(leanmq_ctx)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
