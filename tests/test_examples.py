"""The examples work end to end: the web apps in process, the scripts as subprocesses."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils

from leanmq_async.testing import RedisServer

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def load_example(
    redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], ModuleType]]:
    """Import a fresh copy of an example module, pointed at the private server and prefix."""
    monkeypatch.setenv("LEANMQ_URL", redis_server.url)
    monkeypatch.setenv("LEANMQ_PREFIX", prefix)
    loaded: list[str] = []

    def load(name: str) -> ModuleType:
        module_name = f"_example_{name}_{uuid.uuid4().hex[:8]}"
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # msgspec/pydantic resolve annotations through it
        loaded.append(module_name)
        spec.loader.exec_module(module)
        return module

    yield load
    for module_name in loaded:
        sys.modules.pop(module_name, None)


async def wait_for_status(get: Callable[[], Any], wanted: set[str]) -> dict[str, Any]:
    """Poll ``GET /orders/{id}`` until the order reaches one of ``wanted``."""
    with anyio.fail_after(15):
        while True:
            body: dict[str, Any] = await get()
            if body["status"] in wanted:
                return body
            await anyio.sleep(0.02)


# -- web apps --------------------------------------------------------------------------


async def test_fastapi_app(load_example: Callable[[str], ModuleType], prefix: str) -> None:
    module = load_example("fastapi_app")
    app = module.app
    assert module.mq.prefix == prefix
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/orders", json={"item": "lamp", "quantity": 2})
            assert response.status_code == 202, response.text
            order_id = response.json()["order_id"]
            assert response.json()["status"] == "queued"

            async def get_order(oid: str = order_id) -> Any:
                r = await client.get(f"/orders/{oid}")
                assert r.status_code == 200, r.text
                return r.json()

            done = await wait_for_status(get_order, {"done"})
            assert done == {
                "order_id": order_id,
                "status": "done",
                "item": "lamp",
                "quantity": 2,
                "total": 60,
            }

            response = await client.post("/orders", json={"item": "unobtainium"})
            rejected_id = response.json()["order_id"]
            rejected = await wait_for_status(lambda: get_order(rejected_id), {"rejected"})
            assert "unknown item" in rejected["reason"]

            assert (
                await client.post("/orders", json={"item": "mug", "quantity": 0})
            ).status_code == 422
            assert (await client.get("/orders/nope")).status_code == 404
            health = (await client.get("/health")).json()
            assert health["status"] == "ok"
            assert health["worker"]["running"] is True

        dead = await module.orders.dead_letter_queue().peek_messages()
        assert [d.data["order_id"] for d in dead] == [rejected_id]
        assert dead[0].dead_letter.reason == "unknown item 'unobtainium'"
    # The lifespan stopped the worker gracefully and closed the client.
    assert module.mq._closed


async def test_aiohttp_app(load_example: Callable[[str], ModuleType], prefix: str) -> None:
    module = load_example("aiohttp_app")
    assert module.mq.prefix == prefix
    server = test_utils.TestServer(module.create_app())
    async with test_utils.TestClient(server) as client:
        response = await client.post("/orders", json={"item": "book", "quantity": 3})
        assert response.status == 202, await response.text()
        order_id = (await response.json())["order_id"]

        async def get_order(oid: str = order_id) -> Any:
            r = await client.get(f"/orders/{oid}")
            assert r.status == 200, await r.text()
            return await r.json()

        done = await wait_for_status(get_order, {"done"})
        assert done == {
            "order_id": order_id,
            "status": "done",
            "item": "book",
            "quantity": 3,
            "total": 45,
        }

        response = await client.post("/orders", json={"item": "unobtainium"})
        rejected_id = (await response.json())["order_id"]
        await wait_for_status(lambda: get_order(rejected_id), {"rejected"})

        assert (await client.post("/orders", json={"item": 1})).status == 422
        assert (await client.post("/orders", data=b"{not json")).status == 400
        assert (await client.get("/orders/nope")).status == 404
        health = await (await client.get("/health")).json()
        assert health["worker"]["running"] is True
        assert health["worker"]["handlers"]["orders/orders-group"]["handled"] >= 1

        dead = await module.orders.dead_letter_queue().peek_messages()
        assert [d.data["order_id"] for d in dead] == [rejected_id]
    assert module.mq._closed


# -- scripts ---------------------------------------------------------------------------


@pytest.fixture
async def keys_left(raw: aioredis.Redis, prefix: str) -> AsyncIterator[Callable[[], Any]]:
    async def left() -> list[Any]:
        keys: list[Any] = await raw.keys(f"{prefix}*")
        return sorted(keys)

    yield left


async def run_script(name: str, env: dict[str, str], *args: str) -> tuple[str, str]:
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, str(EXAMPLES / name), *args], env=env, check=False
        )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


def script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEANMQ_")}
    env.update(extra)
    return env


def check_demo_output(out: str, err: str) -> None:
    assert "sent 20 messages" in out
    assert "handled from 'orders' (11):" in out
    assert "handled from 'emails' (6):" in out
    assert "(attempt 2)" in out  # the flaky emails succeeded on their retry
    assert out.count("failed after 3 attempt(s): ConnectionRefusedError") == 2
    assert "orders: {'order_id': 'twelve', 'item': 'typo'} -> payload validation failed" in out
    assert "worker: 17 handled, 7 retried, 3 dead-lettered" in out
    # Logging is configured: the worker's events show on stderr.
    for event in ("worker_started", "retried", "dead_lettered", "shutdown"):
        assert event in err


async def test_demo_with_url(
    redis_server: RedisServer, prefix: str, keys_left: Callable[[], Any]
) -> None:
    out, err = await run_script(
        "demo.py", script_env(LEANMQ_URL=redis_server.url, LEANMQ_PREFIX=prefix)
    )
    check_demo_output(out, err)
    assert "private redis-server" not in out
    assert await keys_left() == []  # on someone else's Redis, the demo cleans up


async def test_demo_starts_its_own_redis() -> None:
    # The README's command on a fresh machine: no LEANMQ_URL, only redis-server on PATH.
    out, err = await run_script("demo.py", script_env())
    assert "started a private redis-server at redis://127.0.0.1:" in out
    check_demo_output(out, err)


async def test_webhook_service(
    redis_server: RedisServer, prefix: str, keys_left: Callable[[], Any]
) -> None:
    out, err = await run_script(
        "webhook_service.py", script_env(LEANMQ_URL=redis_server.url, LEANMQ_PREFIX=prefix)
    )
    assert (
        "routes: /order/status -> order_status, /payment/received -> payment_received, "
        "/inventory/low -> inventory_low"
    ) in out
    assert "sent 11 events" in out
    for line in (
        "order 4 is delivered",
        "payment of 12 for order 4 (via /payment/received, attempt 1)",
        "restock mug (left: 2)",
        "/payment/received: {'order_id': 3, 'amount': -5} -> failed after 3 attempt(s): "
        "ValueError: negative amount -5",
        "/inventory/low: {'sku': 'unknown', 'left': 0} -> failed after 1 attempt(s): "
        "LookupError: no such SKU",
        "/order/status: {'order_id': 'x'} -> payload validation failed",
    ):
        assert line in out
    assert "worker_started" in err
    assert await keys_left() == []
