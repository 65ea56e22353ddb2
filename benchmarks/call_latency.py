"""``queue.call()`` round-trip latency next to the plain send -> handler latency, at 200/s.

Two measurements, same server, same run, a worker at concurrency 500 in the same process
and event loop as the producer (as in ``benchmarks/latency.py``):

* send -> handler start: ``latency.lmq_latency`` (a paced XADD producer; the handler
  subtracts the send time carried in the payload);
* call() round trip: a producer paced the same way starts one ``await q.call(payload)``
  task per message; measured from just before the call until the handler's return value
  is back in the caller: send, read, handle, store the result with the ack (one script),
  its announcement on the shared subscription, and the caller's wake-up.

Reported: p50, p99 and max in ms (median over runs). Run alone:
``python -m benchmarks.call_latency [--latency-seconds S] [--runs N]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio

from benchmarks import latency
from benchmarks._common import (
    LEANMQ_ASYNC,
    Config,
    Server,
    Table,
    make_payload,
    percentile,
    run_async,
    section,
    standalone,
)
from leanmq_async import LeanMQ

NAME = "call_latency"
TITLE = "9. call() round trip vs send -> handler"
RATE = 200
CONCURRENCY = 500
PLAIN = f"{RATE}/s send -> handler start (worker)"
CALL = f"{RATE}/s call() round trip (send, handle, result back)"


async def call_latency(url: str, rate: int, seconds: float) -> dict[str, Any]:
    total = max(1, int(rate * seconds))
    lat: list[int] = []
    wrong = 0
    async with LeanMQ(url, prefix="benchcall:") as mq:
        q = mq.queue("calls")
        await mq.create_queue_pair("calls")

        @q.handler(concurrency=CONCURRENCY, result_ttl=60)
        async def handler(payload: Any) -> int:
            return int(payload["order_id"]) - 1_000_000

        async def one(i: int) -> None:
            nonlocal wrong
            payload = make_payload(i)
            t0 = time.perf_counter_ns()
            value = await q.call(payload, timeout=30)
            lat.append(time.perf_counter_ns() - t0)
            wrong += value != i

        async with mq.worker():
            await q.call(make_payload(-1), timeout=30)  # subscription and scripts warm
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(total):
                    await anyio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                    tg.start_soon(one, i)
                send_seconds = time.perf_counter() - t0
            total_seconds = time.perf_counter() - t0
    assert not wrong, f"{wrong} call(s) returned another message's result"
    return {
        "lat": lat,
        "sent": total,
        "send_seconds": send_seconds,
        "total_seconds": total_seconds,
    }


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    seconds = cfg.latency_seconds
    metrics = ("p50", "p99", "max")
    tables = {m: Table(f"9. {m}", "ms", higher_is_better=False, fmt="{:,.2f}") for m in metrics}
    for t in tables.values():
        t.base_label = "vs send -> handler"
        t.row(PLAIN, LEANMQ_ASYNC)
        t.row(CALL, LEANMQ_ASYNC, base=PLAIN)
    for run_no in range(cfg.runs):
        for name, func in ((PLAIN, latency.lmq_latency), (CALL, call_latency)):
            srv.flush()
            res = run_async(cfg, func, srv.url, RATE, seconds)
            lat = sorted(x / 1e6 for x in res["lat"])
            values = {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": lat[-1]}
            for m, t in tables.items():
                row = t.get(name)
                assert row is not None
                row.values.append(values[m])
                row.note = f"{len(lat):,} of {max(1, int(RATE * seconds)):,} measured"
        print(f"  call latency run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    tables["p50"].notes.append(
        f"{seconds:g} s at {RATE}/s per run; worker and caller in one process and event loop"
    )
    return section(NAME, TITLE, list(tables.values()), merged=[0, 1, 2])


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
