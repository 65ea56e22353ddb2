"""Cancellation: its cost to a message never cancelled, and how soon a cancel stops a handler.

Same server, same run:

* drain: the burst worker of ``drain.py`` (concurrency 500) empties N messages; this
  process's CPU time per message (Redis runs in its own process);
* cancel support: exactly the steps the executor adds to every message for cancellation
  (a lookup in the cancelled set, the processor's cancel scope registered under the
  message's id and dropped, a test after the handler), timed over N messages in one task,
  minus the same loop without them: the CPU it adds per message, and its share of the
  drain's CPU per message (``vs base``). The processor's scope itself is made once per
  processor (and again after a cancel), never per message;
* cancel -> handler stopped: a worker in this process runs a handler that sleeps; a
  message is sent, started, then ``queue.cancel`` is called, and the time from the call to
  the handler's cancellation is taken (the script, the pub/sub announcement, the cancel
  scope); ``STOPS`` times per run;
* ``queue.cancel`` of a waiting message (it is removed and dead-lettered): time per call.

Run alone: ``python -m benchmarks.cancel [--runs N] [--messages N] [--quick]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from statistics import median
from typing import Any

import anyio
import anyio.lowlevel

from benchmarks._common import (
    LEANMQ_ASYNC,
    Config,
    Server,
    Table,
    fill_envelopes,
    payloads,
    run_async,
    section,
    standalone,
)
from benchmarks._consumers import lmq_drain, lmq_names
from leanmq_async import CancelOutcome, LeanMQ
from leanmq_async.worker.cancels import Cancels

NAME = "cancel"
TITLE = "11. Cancellation: cost per message, time to stop a handler"
CONCURRENCY = 500
STOPS = 20
DRAIN = "drain, worker burst c=500: CPU per message"
SUPPORT = "cancel support (never cancelled): CPU per message"
STOP = "queue.cancel -> running handler cancelled"
CALL = "queue.cancel of a waiting message (removed + dead-lettered)"


def measure_drain_cpu(cfg: Config, srv: Server, items: Sequence[Any]) -> float:
    srv.flush()
    stream, _, _ = lmq_names()
    fill_envelopes(srv, stream, items)
    started = time.process_time()
    res = run_async(cfg, lmq_drain, srv.url, len(items), CONCURRENCY)
    cpu = time.process_time() - started
    if res["handled"] != len(items):
        raise AssertionError(f"drain handled {res['handled']} of {len(items)}")
    return cpu / len(items) * 1e6


async def _support_loop(n: int) -> float:
    """µs of CPU the executor's cancellation steps add to one message."""
    cancels = Cancels()
    marked, running = cancels.marked, cancels.running
    sids = [b"%d-0" % i for i in range(n)]
    with anyio.CancelScope() as scope:  # the processor's
        started = time.process_time()
        for _sid in sids:
            try:
                pass
            finally:
                pass
        bare = time.process_time() - started

        started = time.process_time()
        for sid in sids:
            if sid in marked:
                raise AssertionError("never marked")
            running[sid] = scope
            try:
                try:
                    pass
                finally:
                    running.pop(sid, None)
            except BaseException:
                raise
            if scope.cancel_called:
                raise AssertionError("never cancelled")
        full = time.process_time() - started
        await anyio.lowlevel.checkpoint()
    return max(0.0, full - bare) / n * 1e6


async def _stops(url: str, count: int) -> list[float]:
    """ms from ``queue.cancel`` to the running handler's cancellation, ``count`` times."""
    times: list[float] = []
    async with LeanMQ(url, prefix="bench-cancel:") as mq:
        queue, _ = await mq.create_queue_pair("stop")
        started, stopped = anyio.Event(), anyio.Event()
        stopped_at = 0.0

        @queue.handler(concurrency=1)
        async def sleeper(data: Any) -> None:
            nonlocal stopped_at
            started.set()
            try:
                await anyio.sleep(60)
            finally:
                stopped_at = time.perf_counter()
                stopped.set()

        async with mq.worker(block_ms=100):
            for i in range(count):
                started, stopped = anyio.Event(), anyio.Event()
                sid = await queue.send_message({"i": i})
                with anyio.fail_after(10):
                    await started.wait()
                asked = time.perf_counter()
                if await queue.cancel(sid) is not CancelOutcome.RUNNING:
                    raise AssertionError("the handler was not running")
                with anyio.fail_after(10):
                    await stopped.wait()
                times.append((stopped_at - asked) * 1000)
    return times


async def _calls(url: str, n: int) -> float:
    """µs per ``queue.cancel`` of a waiting message."""
    async with LeanMQ(url, prefix="bench-cancel:") as mq:
        queue, _ = await mq.create_queue_pair("calls")
        ids = await queue.send_messages([{"i": i} for i in range(n)])
        started = time.perf_counter()
        for sid in ids:
            if await queue.cancel(sid) is not CancelOutcome.CANCELLED:
                raise AssertionError("not cancelled")
        return (time.perf_counter() - started) / n * 1e6


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    items = payloads(cfg.messages)
    cost = Table(
        f"11. {len(items):,} msgs never cancelled: CPU per message",
        "µs CPU/msg",
        higher_is_better=False,
        fmt="{:,.2f}",
        base_label="drain CPU",
    )
    cost.row(DRAIN, LEANMQ_ASYNC)
    cost.row(SUPPORT, LEANMQ_ASYNC, base=DRAIN)
    stop = Table(f"11. cancel: {STOPS} stops per run", "ms", higher_is_better=False, fmt="{:,.2f}")
    stop.row(STOP, LEANMQ_ASYNC, note="median of the run's stops")
    calls = Table("11. cancel calls", "µs/call", higher_is_better=False, fmt="{:,.0f}")
    calls.row(CALL, LEANMQ_ASYNC)
    n_calls = min(1000, max(100, len(items) // 20))
    worst = 0.0
    for run_no in range(cfg.runs):
        cost.get(DRAIN).values.append(measure_drain_cpu(cfg, srv, items))  # type: ignore[union-attr]
        support = run_async(cfg, _support_loop, len(items))
        cost.get(SUPPORT).values.append(support)  # type: ignore[union-attr]
        srv.flush()
        times = run_async(cfg, _stops, srv.url, STOPS)
        worst = max(worst, *times)
        stop.get(STOP).values.append(median(times))  # type: ignore[union-attr]
        srv.flush()
        calls.get(CALL).values.append(run_async(cfg, _calls, srv.url, n_calls))  # type: ignore[union-attr]
        print(f"  cancel run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    stop.notes.append(f"slowest single stop over all runs: {worst:.1f} ms (the bound: 1 s)")
    cost.notes.append(
        "the idle cancel listener (one pub/sub connection per worker, a socket wait of 1 s) "
        "adds nothing per message"
    )
    return section(NAME, TITLE, [cost, stop, calls], messages=len(items))


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
