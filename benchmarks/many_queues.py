"""One worker serving 1, 100 and 1,000 queues: connections, idle CPU, latency, start-up.

For each queue count N, one worker (``concurrency=2`` per queue, a no-op handler) runs in
the benchmark's process; the producer and the measuring clients are plain ``redis.asyncio``
clients on the same private server. Measured per N:

* start-up: ``async with mq.worker()`` entered (groups, scripts, clock) in ms, and time to
  the first handler for one message sent right after;
* connections held by the worker: CLIENT LIST on the private server minus the
  benchmark's own clients, idle and at most during the load below;
* idle CPU: ``time.process_time()`` of the process over ``IDLE_S`` seconds with nothing
  to do, in % of one core (the producer is not running then);
* the worker runs as under ``leanmq-worker``, which freezes the collector (``gc.freeze``)
  once its worker runs (with 1,000 queues, full collections otherwise pause the loop);
* send -> handler start at 500 msg/s spread at random over the N queues for
  ``--latency-seconds`` (each payload carries ``time.perf_counter_ns()`` taken just before
  its XADD, as in the latency benchmark): p50 and p99 in ms.

It compares against the 1-queue row (the fast path: below ``SHARED_READS_ABOVE`` handlers a
worker keeps a blocking read per handler) and, at 100 queues, against today's per-handler
reads (``shared_reads=False``; at 1,000 queues that design cannot keep up: see issue 14).

Run alone: ``python -m benchmarks.many_queues [--quick] [--latency-seconds S]``.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Sequence
from typing import Any

import anyio
import redis.asyncio as aioredis

from benchmarks._common import (
    LEANMQ_ASYNC,
    Config,
    Server,
    Table,
    median,
    percentile,
    run_async,
    section,
    standalone,
)
from leanmq_async import LeanMQ
from leanmq_async.envelope import get_codec

NAME = "many_queues"
TITLE = "15. One worker, many queues"
RATE = 500
IDLE_S = 10.0
COUNTS = (1, 100, 1000)
CATCH_UP_S = 30.0


async def _clients(admin: aioredis.Redis) -> int:
    return len(await admin.client_list())


async def measure(
    url: str, queues: int, seconds: float, idle_s: float, shared: bool | None
) -> dict[str, Any]:
    """One worker over ``queues`` queues; see the module docstring."""
    prefix = f"mq{queues}{'' if shared is None else int(shared)}:"
    admin = aioredis.Redis.from_url(url)
    producer = aioredis.Redis.from_url(url)
    await admin.ping()
    await producer.ping()
    own = await _clients(admin)
    codec = get_codec("json")
    lat: list[float] = []
    first = anyio.Event()
    out: dict[str, Any] = {}
    gc.unfreeze()
    async with LeanMQ(url, prefix=prefix) as mq:
        qs = [mq.queue(f"q{i}") for i in range(queues)]
        for q in qs:

            @q.handler(concurrency=2)
            async def handle(data: dict[str, Any]) -> None:
                lat.append((time.perf_counter_ns() - data["t"]) / 1e6)
                first.set()

        base = await _clients(admin) - own  # the client's own connection(s) before the worker
        t0 = time.perf_counter()
        async with mq.worker(shared_reads=shared):
            out["startup_ms"] = (time.perf_counter() - t0) * 1000
            # As leanmq-worker does once its worker runs: the runners of many queues are
            # many long-lived objects that every full collection would otherwise walk.
            gc.freeze()
            t1 = time.perf_counter()
            stream = qs[random.randrange(queues)].stream
            await producer.xadd(
                stream, {codec.field: codec.encode({"t": time.perf_counter_ns()})[1]}
            )
            with anyio.fail_after(CATCH_UP_S):
                await first.wait()
            out["first_handler_ms"] = (time.perf_counter() - t1) * 1000
            out["to_first_handler_ms"] = out["startup_ms"] + out["first_handler_ms"]
            lat.clear()
            await anyio.sleep(1.0)  # let start-up's reclaim and recovery passes settle
            c0 = time.process_time()
            await anyio.sleep(idle_s)
            out["idle_cpu_pct"] = (time.process_time() - c0) / idle_s * 100
            out["connections_idle"] = await _clients(admin) - own - base
            peak = out["connections_idle"]
            total = max(1, int(RATE * seconds))
            start = time.perf_counter()
            for k in range(total):
                due = start + k / RATE
                now = time.perf_counter()
                if due > now:
                    await anyio.sleep(due - now)
                stream = qs[random.randrange(queues)].stream
                payload = codec.encode({"t": time.perf_counter_ns()})[1]
                await producer.xadd(stream, {codec.field: payload})
                if k % 100 == 0:
                    peak = max(peak, await _clients(admin) - own - base)
            deadline = time.perf_counter() + CATCH_UP_S
            while len(lat) < total and time.perf_counter() < deadline:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            out["connections_peak"] = peak
            out["handled"], out["sent"] = len(lat), total
            lat.sort()
            out["p50_ms"] = percentile(lat, 50) if lat else float("nan")
            out["p99_ms"] = percentile(lat, 99) if lat else float("nan")
    await admin.aclose()
    await producer.aclose()
    return out


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    seconds = cfg.latency_seconds
    idle_s = 3.0 if cfg.quick else IDLE_S
    metrics = {
        "connections_peak": (
            "connections held by the worker (most during load)",
            "conns",
            False,
            "{:,.0f}",
        ),
        "idle_cpu_pct": ("idle worker CPU", "% of a core", False, "{:,.2f}"),
        "p50_ms": ("send -> handler p50 at 500 msg/s", "ms", False, "{:,.2f}"),
        "p99_ms": ("send -> handler p99 at 500 msg/s", "ms", False, "{:,.2f}"),
        "to_first_handler_ms": ("start-up to first handler", "ms", False, "{:,.1f}"),
    }
    tables = {
        m: Table(f"15. many queues: {title}", unit, higher_is_better=hib, fmt=fmt)
        for m, (title, unit, hib, fmt) in metrics.items()
    }
    cases: list[tuple[str, int, bool | None]] = [
        (f"{n:,} queue{'s' if n > 1 else ''}", n, None) for n in COUNTS
    ]
    cases.append(("100 queues, per-queue reads (before)", 100, False))
    for _ in range(cfg.runs):
        for label, n, shared in cases:
            srv.flush()
            res = run_async(cfg, measure, srv.url, n, seconds, idle_s, shared)
            print(
                f"  {label}: {res['handled']}/{res['sent']} handled, "
                + ", ".join(f"{k}={v:,.2f}" for k, v in res.items() if isinstance(v, float))
                + f", connections idle={res['connections_idle']} peak={res['connections_peak']}"
            )
            for m, table in tables.items():
                row = table.row(label, LEANMQ_ASYNC, base="1 queue" if label != "1 queue" else None)
                row.values.append(float(res[m]))
                row.extra.setdefault("handled", []).append(f"{res['handled']}/{res['sent']}")
    for table in tables.values():
        table.notes.append(
            f"one worker, concurrency=2 per queue, no-op handler; {RATE} msg/s spread at random "
            f"for {seconds:g} s; idle CPU over {idle_s:g} s; median of {cfg.runs} run(s)"
        )
    return section(
        NAME,
        TITLE,
        list(tables.values()),
        medians={t.title: {r.name: median(r.values) for r in t.rows} for t in tables.values()},
    )


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
