"""``leanmq``, the admin CLI: every command in-process, some as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Queue
from leanmq_async.ops.admin_cli import main, table
from leanmq_async.testing import RedisServer, free_port

pytestmark = pytest.mark.anyio


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"<Result {self.code} out={self.out[:300]!r} err={self.err[:300]!r}>"


@pytest.fixture
def run(redis_server: RedisServer, prefix: str, capsys: pytest.CaptureFixture[str]) -> Any:
    """``await run("stats", "--json")``: main() in a worker thread (it runs its own loop)."""

    async def call(*argv: str, url: str | None = None) -> Result:
        capsys.readouterr()
        args = ["--url", url or redis_server.url, "--prefix", prefix, *argv]
        code = await anyio.to_thread.run_sync(main, args)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


@pytest.fixture
async def orders(mq: LeanMQ) -> tuple[Queue, Queue]:
    return await mq.create_queue_pair("orders")


async def fill(queue: Queue) -> list[str]:
    """6 sent: 2 dead-lettered, 1 pending (consumer 'stuck'), 3 waiting; DLQ ids returned."""
    await queue.send_messages([{"n": i} for i in range(6)])
    msgs = await queue.get_messages(count=3, consumer_id="stuck")
    await queue.move_to_dlq([m.id for m in msgs[:2]], "invalid foreign key")
    return [m.id for m in await queue.dead_letter_queue().peek_messages()]


async def test_queues(run: Any, orders: tuple[Queue, Queue]) -> None:
    await fill(orders[0])
    r = await run("queues")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "KIND",
        "MESSAGES",
        "PENDING",
        "DELAYED",
        "GROUPS",
        "CREATED",
    ]
    assert lines[1].split()[:5] == ["orders", "queue", "6", "1", "0"]
    assert lines[2].split()[:4] == ["orders:dlq", "dlq", "2", "0"]
    r = await run("queues", "--json")
    assert [(q["name"], q["message_count"]) for q in r.json()] == [("orders", 6), ("orders:dlq", 2)]
    r = await run("--json", "queues")  # global options also before the command
    assert r.code == 0 and r.json()[0]["name"] == "orders"


async def test_stats(run: Any, orders: tuple[Queue, Queue]) -> None:
    await fill(orders[0])
    r = await run("stats")
    assert r.code == 0, r
    header, row = r.out.splitlines()[:2]
    assert header.split()[:8] == [
        "QUEUE",
        "DEPTH",
        "BACKLOG",
        "PENDING",
        "LAG",
        "OLDEST",
        "DLQ",
        "DELAYED",
    ]
    cells = row.split()
    assert cells[0] == "orders" and cells[1:5] == ["6", "4", "1", "3"] and cells[6] == "2"
    assert "orders-group" in r.out and "stuck (1 pending" in r.out
    r = await run("stats", "--json")
    q = r.json()["queues"][0]
    assert (q["length"], q["pending"], q["lag"], q["dlq_length"]) == (6, 1, 3, 2)
    assert q["enqueued_per_s"] is None
    r = await run("stats", "--json", "--interval", "0.05", "--queue", "orders")
    data = r.json()
    assert data["window_s"] > 0 and data["queues"][0]["enqueued_per_s"] == 0.0
    r = await run("stats", "--queue", "nope")
    assert r.code == 0 and "nope (deleted)" in r.out


async def test_health_once_exit_codes(run: Any, orders: tuple[Queue, Queue]) -> None:
    r = await run("health", "--once")
    assert r.code == 0 and r.out.startswith("status: ok"), r
    await fill(orders[0])  # backlog 4, DLQ 2
    r = await run("health", "--once", "--backlog-warning", "3", "--dlq-warning", "5")
    assert r.code == 1 and "status: warning" in r.out and "[warning] orders:" in r.out, r
    r = await run("health", "--once", "--json", "--dlq-warning", "0", "--dlq-critical", "1")
    assert r.code == 2
    report = r.json()
    assert report["status"] == "critical"
    assert [(i["check"], i["level"]) for i in report["issues"]] == [("dlq", "critical")]
    r = await run("health", "--once", url=f"redis://127.0.0.1:{free_port()}/0")
    assert r.code == 2 and "Redis unreachable" in r.out, r
    r = await run("health", "--once", "--dlq-warning", "5", "--dlq-critical", "1")
    assert r.code == 2 and "above the critical" in r.err


async def test_health_monitor_mode(run: Any, orders: tuple[Queue, Queue]) -> None:
    await fill(orders[0])
    r = await run(
        "health", "--iterations", "2", "--interval", "0.01", "--dlq-warning", "1", "--json"
    )
    assert r.code == 1, r
    (event,) = [json.loads(line) for line in r.out.splitlines()]
    assert (event["queue"], event["previous"], event["current"]) == ("orders", "ok", "warning")
    r = await run("health", "--iterations", "1", "--interval", "0.01", "--dlq-warning", "1")
    assert "orders: ok -> warning" in r.out
    r = await run("health", "--interval", "0")
    assert r.code == 2 and "must be > 0" in r.err


async def test_dlq_list_and_show(run: Any, orders: tuple[Queue, Queue]) -> None:
    ids = await fill(orders[0])
    r = await run("dlq", "list", "orders")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0].split() == ["ID", "FAILED", "REASON", "ATTEMPTS", "DATA"]
    assert lines[1].startswith(ids[0]) and "invalid foreign key" in lines[1]
    assert '{"n": 0}' in lines[1]
    r = await run("dlq", "list", "orders", "--json", "--count", "1", "--start", ids[1])
    (msg,) = r.json()
    assert msg["id"] == ids[1] and msg["dead_letter"]["reason"] == "invalid foreign key"
    r = await run("dlq", "show", "orders", ids[0])
    assert r.code == 0 and "reason:      invalid foreign key" in r.out and '"n": 0' in r.out
    r = await run("dlq", "show", "orders", ids[0], "--json")
    assert r.json()["data"] == {"n": 0}
    r = await run("dlq", "show", "orders", "1-0")
    assert r.code == 1 and "no message 1-0" in r.err
    r = await run("dlq", "show", "orders", "bad-id")
    assert r.code == 2 and "not a stream id" in r.err
    r = await run("dlq", "list", "missing")
    assert r.code == 1 and "has no dead-letter queue" in r.err
    r = await run("dlq", "list", "orders")  # listing consumed nothing
    assert len(r.out.splitlines()) == 3


async def test_dlq_requeue(run: Any, orders: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, dlq = orders
    ids = await fill(queue)
    r = await run("dlq", "requeue", "orders")
    assert r.code == 2 and "ids, or --all" in r.err
    r = await run("dlq", "requeue", "orders", "--all", ids[0])
    assert r.code == 2
    r = await run("dlq", "requeue", "orders", "--all", "--dry-run")
    assert (
        r.code == 0 and f"would requeue 2 message(s) to 'orders'\n  {ids[0]}\n  {ids[1]}" in r.out
    )
    assert await raw.xlen(dlq.stream) == 2
    r = await run("dlq", "requeue", "orders", ids[1], "1-0", "--json")
    report = r.json()
    assert report["requeued"] == [ids[1]] and report["skipped"][0]["id"] == "1-0"
    assert await raw.xlen(dlq.stream) == 1
    assert await raw.xlen(queue.stream) == 7


async def test_dlq_purge_needs_confirm(
    run: Any, orders: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    _, dlq = orders
    await fill(orders[0])
    r = await run("dlq", "purge", "orders")
    assert r.code == 2 and "--confirm" in r.err
    assert await raw.xlen(dlq.stream) == 2
    r = await run("dlq", "purge", "orders", "--confirm")
    assert r.code == 0 and "purged 2 dead letter(s) of 'orders'" in r.out
    assert await raw.xlen(dlq.stream) == 0


async def test_clear(run: Any, orders: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, dlq = orders
    await fill(queue)
    await queue.send_message("later", delay=3600)
    r = await run("clear", "orders")
    assert r.code == 2 and "--confirm" in r.err
    assert await raw.xlen(queue.stream) == 6
    r = await run("clear", "orders", "--confirm")
    assert r.code == 0 and r.out.strip() == "cleared 'orders': 6 message(s), 1 delayed"
    assert await raw.xlen(dlq.stream) == 2
    r = await run("clear", "orders", "--include-dlq", "--confirm", "--json")
    assert r.json() == {"queue": "orders", "messages": 0, "delayed": 0, "dead_letters": 2}
    assert await raw.xlen(dlq.stream) == 0
    r = await run("clear", "missing", "--confirm")
    assert r.code == 1


async def test_cleanup(run: Any, orders: tuple[Queue, Queue], raw: aioredis.Redis) -> None:
    queue, _ = orders
    await queue.send_messages(range(5))
    msgs = await queue.get_messages(count=3)
    await queue.acknowledge_messages([m.id for m in msgs[:2]])
    r = await run("cleanup", "--max-age-hours", "24")
    assert r.code == 0 and "trimmed 0 acknowledged entries older than 24h" in r.out, r
    r = await run("cleanup", "--max-age-hours", "0", "--json")
    assert r.json()["trimmed"] == {"orders": 2}
    assert await raw.xlen(queue.stream) == 3
    r = await run("cleanup")
    assert r.code == 2 and "--max-age-hours" in r.err
    r = await run("cleanup", "--max-age-hours", "-1")
    assert r.code == 2


async def test_force_process(run: Any, orders: tuple[Queue, Queue]) -> None:
    queue, _ = orders
    await fill(queue)  # one message stuck with consumer 'stuck'
    r = await run("force-process", "orders", "--batch-size", "5")
    assert r.code == 0 and "re-delivered 0 of 0" in r.out  # idle less than the default 60 s
    r = await run("force-process", "orders", "--batch-size", "5", "--min-idle", "0", "--dry-run")
    assert r.code == 0 and "1 message(s) of 'orders' (group orders-group) stuck" in r.out, r
    assert r.out.splitlines()[2].split()[1] == "stuck"  # the consumer holding it
    r = await run("force-process", "orders", "--batch-size", "5", "--min-idle", "0", "--json")
    report = r.json()
    assert len(report["redelivered"]) == 1 and report["skipped"] == []
    assert (await queue.get_info()).pending_messages == 0
    r = await run("force-process", "orders", "--batch-size", "0")
    assert r.code == 2


async def test_watch(run: Any, orders: tuple[Queue, Queue]) -> None:
    await fill(orders[0])
    r = await run("watch", "--iterations", "2", "--interval", "0.05")
    assert r.code == 0, r
    assert r.out.count("leanmq watch") == 2
    assert "rates over" in r.out  # the second view has rates
    r = await run("watch", "--iterations", "2", "--interval", "0.01", "--json")
    views = [json.loads(line) for line in r.out.splitlines()]
    assert len(views) == 2 and views[1]["window_s"] > 0


async def test_usage_errors(run: Any) -> None:
    r = await run()
    assert r.code == 2 and "COMMAND" in r.err
    r = await run("nope")
    assert r.code == 2
    r = await run("stats", url="http://x")
    assert r.code == 2 and "unsupported Redis URL" in r.err
    r = await run("serve", "--server", "nonexistent")
    assert r.code == 2


def test_table_alignment() -> None:
    text = table(["NAME", "N"], [["a", "1"], ["bbb", "1,000"]])
    assert text.splitlines() == ["NAME  N", "a         1", "bbb   1,000"]


# -- subprocesses -------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leanmq_async.ops.admin_cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def test_subprocess_health_for_cron(
    redis_server: RedisServer, prefix: str, orders: tuple[Queue, Queue]
) -> None:
    env = {"LEANMQ_URL": redis_server.url, "LEANMQ_PREFIX": prefix}
    done = await anyio.to_thread.run_sync(lambda: cli("health", "--once", env=env))
    assert done.returncode == 0, done.stderr
    await fill(orders[0])
    done = await anyio.to_thread.run_sync(
        lambda: cli("health", "--once", "--dlq-warning", "1", env=env)
    )
    assert done.returncode == 1 and "status: warning" in done.stdout
    done = await anyio.to_thread.run_sync(
        lambda: cli("health", "--once", "--dlq-critical", "1", "--dlq-warning", "0", env=env)
    )
    assert done.returncode == 2


async def test_subprocess_destructive_commands(
    redis_server: RedisServer, prefix: str, orders: tuple[Queue, Queue], raw: aioredis.Redis
) -> None:
    await fill(orders[0])
    base = ["--url", redis_server.url, "--prefix", prefix]
    done = await anyio.to_thread.run_sync(lambda: cli(*base, "dlq", "purge", "orders"))
    assert done.returncode == 2 and "add --confirm" in done.stderr
    assert await raw.xlen(orders[1].stream) == 2
    done = await anyio.to_thread.run_sync(
        lambda: cli(*base, "dlq", "purge", "orders", "--confirm", "--json")
    )
    assert done.returncode == 0 and json.loads(done.stdout)["purged"] == 2
    done = await anyio.to_thread.run_sync(lambda: cli(*base, "queues", "--json"))
    assert json.loads(done.stdout)[1]["message_count"] == 0


@pytest.fixture
def served(redis_server: RedisServer, prefix: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "uvicorn":
        pytest.importorskip("uvicorn", reason="uvicorn is not in the dev extra yet")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "leanmq_async.ops.admin_cli", "--url", redis_server.url,
            "--prefix", prefix, "serve", "--port", str(port), "--token", "s3cret",
            "--server", request.param,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {proc.communicate()}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    # A graceful stop: uvicorn re-raises the signal once it has shut down cleanly.
    uvicorn_exit = request.param == "uvicorn" and proc.returncode == -signal.SIGTERM
    assert proc.returncode == 0 or uvicorn_exit, err
    assert f"serving the admin API on {url}/ with {request.param}" in err


@pytest.mark.parametrize("served", ["uvicorn", "aiohttp"], indirect=True)
async def test_serve(served: str, orders: tuple[Queue, Queue]) -> None:
    await fill(orders[0])
    auth = {"Authorization": "Bearer s3cret"}
    async with httpx.AsyncClient(base_url=served) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "<title>leanmq queues</title>" in page.text
        assert (await client.get("/stats")).status_code == 401
        stats = await client.get("/stats", headers=auth)
        assert stats.status_code == 200 and stats.json()["queues"][0]["dlq_length"] == 2
        health = await client.get("/health", headers=auth)
        assert health.status_code == 200 and health.json()["status"] == "ok"
