"""Concurrent producers: many tasks each sending one message per call (issue 14).

A web app sends one message per request from many concurrent tasks. Compares, on the
same private Redis and in the same run, for 1, 10, 50 and 200 tasks sharing the
messages (each task awaits one send after the other):

* ceiling: ``await r.xadd(stream, {"j": msgspec.json.encode(payload)})`` on one pooled
  ``redis.asyncio`` client (redis-py's default pool, sized to a connection per task:
  each task its own XADD on its own connection);
* leanmq_async: ``await queue.send_message(payload)`` on one client: concurrent sends
  coalesce (what is sent while a send is in flight goes out in the next pipeline);
* the same 50 tasks with ``LeanMQ(coalesce_sends=False)``: each send on its own
  connection, as before issue 14;
* bulk: ``await queue.send_messages(chunk)``, 1000 per call from one task (the client's
  own bulk rate; the ``vs bulk`` column).

Targets (issue 14): 50 tasks >= 2.5x the ceiling at 50 tasks and >= 0.5x bulk; 1 task
(a lone send) >= 0.9x a lone XADD.

Run alone: ``python -m benchmarks.producers [--runs N] [--messages N] [--quick]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis

from benchmarks._common import (
    CEILING,
    LEANMQ_ASYNC,
    Config,
    Server,
    Table,
    payloads,
    run_async,
    section,
    standalone,
)
from leanmq_async import LeanMQ

NAME = "producers"
TITLE = "14. Concurrent producers"
TASKS = (1, 10, 50, 200)
CHUNK = 1000
BULK = "Queue.send_messages, 1000 per call"
ALONE = "Queue.send_message, 50 tasks, coalesce_sends=False"


def plain_name(n: int) -> str:
    return f"redis.asyncio XADD, {n} task{'s' if n > 1 else ''}"


def lmq_name(n: int) -> str:
    return f"Queue.send_message, {n} task{'s' if n > 1 else ''}"


async def _spread(n: int, items: Sequence[Any], send: Any) -> float:
    """``send(item)`` for every item, from ``n`` tasks at once; the seconds it took."""

    async def task(k: int) -> None:
        for data in items[k::n]:
            await send(data)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(n):
            tg.start_soon(task, k)
    return time.perf_counter() - t0


async def plain(url: str, items: Sequence[Any], n: int) -> float:
    # redis-py's default pool, sized for a connection per task (its default refuses more
    # than 100 at once; each task holds at most one, so none ever waits).
    r = aioredis.Redis.from_pool(aioredis.ConnectionPool.from_url(url, max_connections=n))
    encode = msgspec.json.encode
    try:
        await r.ping()

        async def send(data: Any) -> None:
            await r.xadd("plain:producers", {"j": encode(data)})

        return await _spread(n, items, send)
    finally:
        await r.aclose()


async def lmq(url: str, items: Sequence[Any], n: int, coalesce: bool = True) -> float:
    async with LeanMQ(url, prefix="bench:", coalesce_sends=coalesce) as mq:
        q, _ = await mq.create_queue_pair("producers")
        return await _spread(n, items, q.send_message)


async def lmq_bulk(url: str, items: Sequence[Any]) -> float:
    async with LeanMQ(url, prefix="bench:") as mq:
        q, _ = await mq.create_queue_pair("producers")
        t0 = time.perf_counter()
        for i in range(0, len(items), CHUNK):
            await q.send_messages(items[i : i + CHUNK])
        return time.perf_counter() - t0


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    items = payloads(cfg.messages)
    count = len(items)
    table = Table("14. concurrent producers (one message per call)", "msg/s", base_label="bulk")
    for n in TASKS:
        table.row(plain_name(n), CEILING)
        table.row(lmq_name(n), LEANMQ_ASYNC, ceiling=plain_name(n), base=BULK)
    table.row(ALONE, LEANMQ_ASYNC, ceiling=plain_name(50), base=BULK)
    table.row(BULK, LEANMQ_ASYNC)
    for run_no in range(cfg.runs):
        steps: list[tuple[str, Any]] = [(BULK, lambda: run_async(cfg, lmq_bulk, srv.url, items))]
        for n in TASKS:
            steps.append((plain_name(n), lambda n=n: run_async(cfg, plain, srv.url, items, n)))
            steps.append((lmq_name(n), lambda n=n: run_async(cfg, lmq, srv.url, items, n)))
        steps.append((ALONE, lambda: run_async(cfg, lmq, srv.url, items, 50, False)))
        # Rotate the order from run to run, so no variant always goes first.
        k = run_no % len(steps)
        for name, step in steps[k:] + steps[:k]:
            srv.flush()
            elapsed = step()
            table.get(name).values.append(count / elapsed)  # type: ignore[union-attr]
        print(f"  producers run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    table.notes.append(
        "each task awaits one send after the other; the ceiling's tasks each hold a pooled "
        "connection, leanmq_async's concurrent sends share pipelines (one in flight at a time)"
    )
    return section(NAME, TITLE, [table], messages=count)


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
