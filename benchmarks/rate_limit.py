"""Rate-limiter overhead: drain with a limit that never bites vs the same drain without.

Each run drains the same N pre-filled messages with a burst worker at concurrency 500,
three ways, and checks every message was handled once and none waited (no limit ever
bit, nothing deferred):

* no limit: the plain handler;
* ``RateLimit(100_000, per=1.0)``: one limit for the handler; each message asks
  ``lua/rate_limit.lua`` for a start, the processors asking at once in one call;
* ``RateLimit(100_000, per=1.0, key=...)``: per key, 100 keys (``order_id % 100``).

The overhead per message is ``1/rate(limited) - 1/rate(plain)`` in µs of wall time for
the whole drain (worker CPU, Redis CPU and the round trips together), median over runs.
Redis CPU per message is reported too (``INFO cpu`` before and after).

Run alone: ``python -m benchmarks.rate_limit [--runs N] [--messages N] [--quick]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio

from benchmarks._common import (
    LEANMQ_ASYNC,
    Config,
    Server,
    Table,
    fill_envelopes,
    median,
    payloads,
    run_async,
    section,
    standalone,
)
from benchmarks._consumers import PREFIX, QUEUE, lmq_names
from leanmq_async import LeanMQ, RateLimit

NAME = "rate_limit"
TITLE = "13. Rate-limiter overhead per message"
CONCURRENCY = 500
PLAIN = "worker burst c=500, no rate limit"
GLOBAL = "same, RateLimit(100_000, per=1.0)"
KEYED = "same, RateLimit(100_000, per=1.0, key=order_id % 100)"
LIMITS: dict[str, RateLimit | None] = {
    PLAIN: None,
    GLOBAL: RateLimit(100_000, per=1.0),
    KEYED: RateLimit(100_000, per=1.0, key=lambda m: m.data["order_id"] % 100),
}


async def drain(url: str, expected: int, limit: RateLimit | None) -> dict[str, Any]:
    """Drain ``expected`` messages with a burst worker; the handler's counters."""
    mq = LeanMQ(url, prefix=PREFIX)
    queue = mq.queue(QUEUE)
    calls = 0
    done = anyio.Event()

    async def handler(payload: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == expected:
            done.set()

    options: dict[str, Any] = {"concurrency": CONCURRENCY}
    if limit is not None:
        options["rate_limit"] = limit
    queue.handler(**options)(handler)
    try:
        t0 = time.perf_counter()
        async with mq.worker(burst=True, block_ms=100) as worker:
            await done.wait()
            elapsed = time.perf_counter() - t0
            await worker._finished.wait()
        stats = worker.stats
        return {"elapsed": elapsed, "handled": calls, "rate_limited": stats.rate_limited}
    finally:
        await mq.aclose()


def measure(cfg: Config, srv: Server, items: Sequence[Any], name: str) -> tuple[float, float]:
    """(msg/s, Redis CPU µs per message) of one drain."""
    srv.flush()
    stream, _, _ = lmq_names()
    fill_envelopes(srv, stream, items)
    _, cpu0 = srv.counters()
    res = run_async(cfg, drain, srv.url, len(items), LIMITS[name])
    _, cpu1 = srv.counters()
    if res["handled"] != len(items) or res["rate_limited"]:
        raise AssertionError(f"{name}: {res}, expected {len(items)} handled, none deferred")
    return len(items) / res["elapsed"], (cpu1 - cpu0) / len(items) * 1e6


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    items = payloads(cfg.messages)
    table = Table(
        f"13. drain {len(items):,} msgs with a rate limit that never bites",
        "msg/s",
        base_label="no limit",
    )
    for name in LIMITS:
        table.row(name, LEANMQ_ASYNC, base=None if name == PLAIN else PLAIN)
    redis_cpu: dict[str, list[float]] = {name: [] for name in LIMITS}
    for run_no in range(cfg.runs):
        names = list(LIMITS)
        k = run_no % len(names)
        for name in names[k:] + names[:k]:
            rate, cpu = measure(cfg, srv, items, name)
            table.get(name).values.append(rate)  # type: ignore[union-attr]
            redis_cpu[name].append(cpu)
        print(f"  rate_limit run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    plain = table.get(PLAIN)
    assert plain is not None
    for name in (GLOBAL, KEYED):
        row = table.get(name)
        assert row is not None
        overhead = [(1 / a - 1 / b) * 1e6 for a, b in zip(row.values, plain.values, strict=True)]
        row.extra["overhead_us_per_msg"] = round(median(overhead), 1)
        row.note = f"+{median(overhead):.1f} µs/msg"
    for name, values in redis_cpu.items():
        row = table.get(name)
        assert row is not None
        row.extra["redis_cpu_us_per_msg"] = round(median(values), 1)
    table.notes.append(
        "overhead = 1/rate(limited) - 1/rate(no limit), per run, median; Redis CPU µs/msg: "
        + ", ".join(f"{n.split(',')[-1].strip()}: {median(v):.1f}" for n, v in redis_cpu.items())
    )
    return section(NAME, TITLE, [table], messages=len(items))


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
