"""A FastAPI app with the worker embedded in its lifespan.

    LEANMQ_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app:app
    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"item": "lamp", "quantity": 2}'
    curl localhost:8000/orders/<order_id>

``POST /orders`` enqueues and answers 202 at once; the handler, running in the same
process (``async with mq.worker():`` in the lifespan), processes the order and records its
status in a Redis hash, which ``GET /orders/{order_id}`` reads. Several app processes
share the work: each runs a worker in the same consumer group. Settings from the
environment: LEANMQ_URL (default redis://localhost:6379/0), LEANMQ_PREFIX (default "app:").
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from leanmq_async import LeanMQ, Reject

REDIS_URL = os.environ.get("LEANMQ_URL", "redis://localhost:6379/0")
PREFIX = os.environ.get("LEANMQ_PREFIX", "app:")

mq = LeanMQ(REDIS_URL, prefix=PREFIX)  # no I/O until the app starts
orders = mq.queue("orders")
STATUS_KEY = f"{PREFIX}order-status"  # hash: order id -> JSON status record


class Order(msgspec.Struct):
    """What goes through the queue (the handler gets it validated)."""

    order_id: str
    item: str
    quantity: int


class OrderIn(BaseModel):
    """The request body of ``POST /orders``."""

    item: str = Field(min_length=1)
    quantity: int = Field(default=1, ge=1)


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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The worker runs in the background while the app serves, and stops gracefully
    # (in-flight orders finish) when the app shuts down. It installs no signal handlers:
    # uvicorn keeps its own.
    async with mq, mq.worker() as worker:
        app.state.worker = worker
        yield


app = FastAPI(title="leanmq_async + FastAPI", lifespan=lifespan)


@app.post("/orders", status_code=202)
async def create_order(body: OrderIn) -> dict[str, str]:
    order_id = uuid.uuid4().hex
    await record(order_id, status="queued", item=body.item)
    await orders.send_message(Order(order_id=order_id, item=body.item, quantity=body.quantity))
    return {"order_id": order_id, "status": "queued"}


@app.get("/orders/{order_id}")
async def get_order(order_id: str) -> dict[str, Any]:
    raw = await mq.redis.hget(STATUS_KEY, order_id)
    if raw is None:
        raise HTTPException(status_code=404, detail="no such order")
    status: dict[str, Any] = msgspec.json.decode(raw)
    return {"order_id": order_id, **status}


@app.get("/health")
async def health() -> dict[str, Any]:
    report: dict[str, Any] = await app.state.worker.health()
    return report


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
