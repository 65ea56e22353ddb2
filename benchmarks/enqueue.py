"""Enqueue throughput: one message per call, and in bulk.

Compares, on the same private Redis and in the same run:

* one by one:
  - ceiling: ``await r.xadd(stream, {"j": msgspec.json.encode(payload)})`` in a loop on a
    bare ``redis.asyncio`` client (no envelope, no id, no checks);
  - leanmq_async: ``await queue.send_message(payload)`` in a loop (envelope with a uuid4
    message id and a timestamp, one XADD);
  - leanmq 0.2: its sync ``Queue.send_message(payload)`` in a loop (json.dumps, XADD with
    MAXLEN ~ 100000), in the main thread.
* bulk:
  - ceiling: XADD pipelined in chunks of 1000 (``transaction=False``);
  - leanmq_async: ``await queue.send_messages(chunk)`` in chunks of 1000 (one EVALSHA per
    chunk, atomic);
  - leanmq 0.2: it has no bulk API, so its row is the one-by-one loop again.

Run alone: ``python -m benchmarks.enqueue [--runs N] [--messages N] [--quick]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from benchmarks._common import (
    CEILING,
    LEANMQ_ASYNC,
    LEANMQ_SYNC,
    Config,
    Server,
    Table,
    leanmq02,
    payloads,
    run_async,
    section,
    standalone,
)
from leanmq_async import LeanMQ

NAME = "enqueue"
TITLE = "1-2. Enqueue"
CHUNK = 1000

ONE_CEIL = "redis.asyncio XADD loop"
ONE_LMQ = "Queue.send_message loop"
ONE_SYNC = "sync Queue.send_message loop"
BULK_CEIL = "pipelined XADD, 1000 per pipeline"
BULK_LMQ = "Queue.send_messages, 1000 per call"
BULK_SYNC = "sync send_message loop (no bulk API)"


async def plain_one(url: str, items: Sequence[Any]) -> float:
    r = aioredis.Redis.from_url(url)
    encode = msgspec.json.encode
    try:
        await r.ping()
        t0 = time.perf_counter()
        for data in items:
            await r.xadd("plain:enqueue", {"j": encode(data)})
        return time.perf_counter() - t0
    finally:
        await r.aclose()


async def plain_bulk(url: str, items: Sequence[Any]) -> float:
    r = aioredis.Redis.from_url(url)
    encode = msgspec.json.encode
    try:
        await r.ping()
        t0 = time.perf_counter()
        for i in range(0, len(items), CHUNK):
            async with r.pipeline(transaction=False) as pipe:
                for data in items[i : i + CHUNK]:
                    pipe.xadd("plain:enqueue", {"j": encode(data)})
                await pipe.execute()
        return time.perf_counter() - t0
    finally:
        await r.aclose()


async def lmq_one(url: str, items: Sequence[Any]) -> float:
    async with LeanMQ(url, prefix="bench:") as mq:
        q, _ = await mq.create_queue_pair("enqueue")
        t0 = time.perf_counter()
        for data in items:
            await q.send_message(data)
        return time.perf_counter() - t0


async def lmq_bulk(url: str, items: Sequence[Any]) -> float:
    async with LeanMQ(url, prefix="bench:") as mq:
        q, _ = await mq.create_queue_pair("enqueue")
        t0 = time.perf_counter()
        for i in range(0, len(items), CHUNK):
            await q.send_messages(items[i : i + CHUNK])
        return time.perf_counter() - t0


def sync_one(srv: Server, items: Sequence[Any]) -> float:
    mq = leanmq02(srv, "bench02:")
    try:
        q, _ = mq.create_queue_pair("enqueue")
        t0 = time.perf_counter()
        for data in items:
            q.send_message(data)
        return time.perf_counter() - t0
    finally:
        mq.close()


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    items = payloads(cfg.messages)
    n = len(items)
    one = Table("1. enqueue one by one (sequential awaits)", "msg/s")
    bulk = Table("2. bulk enqueue", "msg/s")
    one.row(ONE_CEIL, CEILING)
    one.row(ONE_LMQ, LEANMQ_ASYNC, ceiling=ONE_CEIL, sync=ONE_SYNC)
    one.row(ONE_SYNC, LEANMQ_SYNC, ceiling=ONE_CEIL)
    bulk.row(BULK_CEIL, CEILING)
    bulk.row(BULK_LMQ, LEANMQ_ASYNC, ceiling=BULK_CEIL, sync=BULK_SYNC)
    bulk.row(BULK_SYNC, LEANMQ_SYNC, ceiling=BULK_CEIL)
    for run_no in range(cfg.runs):
        steps = [
            (one, ONE_CEIL, lambda: run_async(cfg, plain_one, srv.url, items)),
            (one, ONE_LMQ, lambda: run_async(cfg, lmq_one, srv.url, items)),
            (one, ONE_SYNC, lambda: sync_one(srv, items)),
            (bulk, BULK_CEIL, lambda: run_async(cfg, plain_bulk, srv.url, items)),
            (bulk, BULK_LMQ, lambda: run_async(cfg, lmq_bulk, srv.url, items)),
        ]
        # Rotate the order from run to run, so no variant always goes first.
        k = run_no % len(steps)
        for table, name, step in steps[k:] + steps[:k]:
            srv.flush()
            elapsed = step()
            table.get(name).values.append(n / elapsed)  # type: ignore[union-attr]
        bulk.get(BULK_SYNC).values.append(one.get(ONE_SYNC).values[-1])  # type: ignore[union-attr]
        print(f"  enqueue run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    one.notes.append(
        "ceiling writes the bare payload; leanmq_async adds an envelope (uuid4 id, "
        "timestamp, ~60 B) and maps errors; both do one XADD round trip per message"
    )
    bulk.notes.append("leanmq 0.2 has no bulk send: its row repeats its one-by-one loop")
    return section(NAME, TITLE, [one, bulk], messages=n)


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
