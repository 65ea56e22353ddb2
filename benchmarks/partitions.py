"""Drain one partitioned queue (partitions=6) on 1 shard vs 3 shards, with N worker processes.

``python -m benchmarks.partitions [--messages 20000] [--runs 1] [--processes 1,2,4]``
(not part of ``python -m benchmarks``: it starts a Redis Cluster).

* 1 shard: one private ``redis-server``;
* 3 shards: a private Redis Cluster of 3 primaries without replicas
  (:mod:`leanmq_async.testing_cluster`), the six partitions spread over its primaries.

For each cell the parent fills ``bench`` (``mq.queue("bench", partitions=6)``,
round-robin) with the messages, starts N child processes, waits until each is imported,
connected and has registered its handler (a "ready" line on stdout), then starts the
clock and releases them all (a "go" line on stdin). Each child runs a burst worker
(``mq.run_worker(burst=True, block_ms=100)``) with a per-process budget of 200 messages
in flight: ``concurrency=ceil(200 / 6)`` per partition. The clock stops at the last
handler return over all children (``time.perf_counter`` is the system's monotonic
clock, shared by processes). msg/s = messages / that time; afterwards every message
must have been handled once and nothing may be left pending.

Every process (Redis nodes included) shares the machine's cores: on a small machine
more shards or more workers compete for the same CPUs, so the numbers show the cost
and the headroom of spreading, not a cluster of separate machines.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio

from benchmarks._common import RESULTS_DIR, payloads, quiet_logging
from leanmq_async import LeanMQ
from leanmq_async.testing import RedisServer
from leanmq_async.testing_cluster import RedisCluster, cluster_support

REPO = Path(__file__).resolve().parent.parent
QUEUE = "bench"
PARTITIONS = 6
BUDGET = 200  # messages in flight per worker process
CONCURRENCY = math.ceil(BUDGET / PARTITIONS)


# -- child --------------------------------------------------------------------------------


async def _child(url: str, prefix: str, index: int) -> dict[str, Any]:
    handled = 0
    last = 0.0
    async with LeanMQ(url, prefix=prefix, consumer_name=f"w{index}") as mq:
        queue = mq.queue(QUEUE, partitions=PARTITIONS)

        @queue.handler(concurrency=CONCURRENCY)
        async def handle(payload: Any) -> None:
            nonlocal handled, last
            handled += 1
            last = time.perf_counter()

        await mq.store.ping()  # connected (on a cluster: the layout is known)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        await mq.run_worker(burst=True, block_ms=100, maintenance_interval=0.5)
    return {"index": index, "handled": handled, "last": last}


def child(url: str, prefix: str, index: int) -> None:
    quiet_logging()
    result = anyio.run(_child, url, prefix, index, backend="asyncio")
    print(json.dumps(result), flush=True)


# -- parent -------------------------------------------------------------------------------


async def _fill(url: str, prefix: str, items: Sequence[Any]) -> None:
    async with LeanMQ(url, prefix=prefix) as mq:
        queue = mq.queue(QUEUE, partitions=PARTITIONS)
        await queue.create()
        for start in range(0, len(items), 1200):
            await queue.send_messages(items[start : start + 1200])
        info = await queue.get_info()
        assert info.message_count == len(items), info


async def _leftover(url: str, prefix: str) -> tuple[int, int]:
    async with LeanMQ(url, prefix=prefix) as mq:
        info = await mq.queue(QUEUE, partitions=PARTITIONS).get_info()
        return info.pending_messages, info.delayed_messages


def measure(url: str, items: Sequence[Any], n: int) -> float:
    prefix = f"bp{uuid.uuid4().hex[:8]}:"
    anyio.run(_fill, url, prefix, items, backend="asyncio")
    cmd = [sys.executable, "-m", "benchmarks.partitions", "--child", "--url", url]
    cmd += ["--prefix", prefix]
    procs = [
        subprocess.Popen(
            [*cmd, "--index", str(i)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a child did not get ready: {line!r}")
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a child failed: {[p.returncode for p in procs]}")
    reports = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    handled = sum(r["handled"] for r in reports)
    if handled != len(items):
        raise AssertionError(f"x{n}: handled {handled}, expected {len(items)}")
    pending, delayed = anyio.run(_leftover, url, prefix, backend="asyncio")
    if pending or delayed:
        raise AssertionError(f"x{n}: {pending} pending, {delayed} delayed left")
    return len(items) / (max(r["last"] for r in reports) - t0)


def topology(name: str) -> AbstractContextManager[Any]:
    if name == "1 shard":
        return RedisServer()
    return RedisCluster(primaries=3, replicas=0)


def run(messages: int, runs: int, processes: Sequence[int]) -> dict[str, dict[int, list[float]]]:
    items = payloads(messages)
    layouts = ["1 shard", "3 shards"]
    reason = cluster_support()
    if reason is not None:
        print(f"(no local Redis Cluster: {reason}; measuring 1 shard only)")
        layouts = layouts[:1]
    results: dict[str, dict[int, list[float]]] = {}
    for name in layouts:
        with topology(name) as server:
            results[name] = {n: [] for n in processes}
            for run_no in range(runs):
                for n in processes:
                    rate = measure(server.url, items, n)
                    results[name][n].append(rate)
                    print(f"  {name}, {n} process(es), run {run_no + 1}: {rate:,.0f} msg/s")
    return results


def format_results(results: dict[str, dict[int, list[float]]], messages: int) -> str:
    processes = sorted({n for cells in results.values() for n in cells})
    head = ["", *[f"{n} worker process(es)" for n in processes]]
    rows = [head]
    for name, cells in results.items():
        rows.append(
            [name, *[f"{sorted(cells[n])[len(cells[n]) // 2]:,.0f} msg/s" for n in processes]]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        f"drain {messages:,} msgs, partitions={PARTITIONS}, concurrency {BUDGET} per process "
        f"({CONCURRENCY} per partition), burst workers (median of runs)"
    ]
    lines.extend(
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--messages", type=int, default=20_000, help="messages per cell; 20000")
    p.add_argument("--runs", type=int, default=1, help="runs per cell (median); 1")
    p.add_argument("--processes", default="1,2,4", help="worker process counts; 1,2,4")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "partitions.json")
    a = p.parse_args(argv)
    if a.child:
        child(a.url, a.prefix, a.index)
        return
    quiet_logging()
    processes = [int(x) for x in a.processes.split(",") if x.strip()]
    started = time.perf_counter()
    results = run(max(1000, a.messages), max(1, a.runs), processes)
    print(format_results(results, a.messages))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps(
            {
                "messages": a.messages,
                "partitions": PARTITIONS,
                "concurrency_per_process": BUDGET,
                "rates": {
                    name: {str(n): v for n, v in cells.items()} for name, cells in results.items()
                },
                "elapsed_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
