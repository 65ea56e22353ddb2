"""Drain with priorities vs plain: the cost of reading three priority levels.

Each run fills one queue with N messages and drains it with a burst worker, twice:

* plain: every message at the default level (the main stream): XREADGROUP, as always;
* 3 levels: the same N spread evenly over ``low``, ``normal`` and ``high`` (sent in that
  order, so the high ones are the newest): the worker reads with ``lua/claim.lua``,
  highest level first (one claim in 20 lowest first: the starvation guard).

Both at concurrency 200 and at concurrency 1 (where every claim takes one message:
the per-read cost shows most). Timed from the worker's start until every message was
handled and acked. The 3-level run also reports where, in handling order, the last high
message ran (the ideal is N/3: every high one before any other).

Run alone: ``python -m benchmarks.priorities [--runs N] [--messages N] [--quick]``.
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
    payloads,
    run_async,
    section,
    standalone,
)
from leanmq_async import LeanMQ

NAME = "priorities"
TITLE = "12. Drain with priorities vs plain"
PREFIX = "benchp:"
QUEUE = "prio"


async def _drain(url: str, items: Sequence[Any], levels: bool, concurrency: int) -> dict[str, Any]:
    async with LeanMQ(url, prefix=PREFIX) as mq:
        queue, _ = await mq.create_queue_pair(QUEUE)
        third = len(items) // 3
        parts = [("low", items[:third]), ("normal", items[third : 2 * third])]
        parts.append(("high", items[2 * third :]))
        for level, chunk in parts:
            for i in range(0, len(chunk), 1000):
                batch = [{**p, "level": level} for p in chunk[i : i + 1000]]
                await queue.send_messages(batch, priority=level if levels else None)
        seen: list[str] = []
        done = anyio.Event()

        @queue.handler(concurrency=concurrency)
        async def handle(payload: dict[str, Any]) -> None:
            seen.append(payload["level"])
            if len(seen) == len(items):
                done.set()

        t0 = time.perf_counter()
        async with mq.worker(burst=True, block_ms=100):
            await done.wait()
        elapsed = time.perf_counter() - t0
        info = await queue.get_info()
        if len(seen) != len(items) or info.pending_messages:
            raise AssertionError(f"handled {len(seen)} of {len(items)}, {info} left")
        highs = [i for i, level in enumerate(seen) if level == "high"]
        await mq.delete_queue(QUEUE)
    return {"elapsed": elapsed, "last_high": highs[-1] + 1 if highs else 0}


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    items = payloads(cfg.messages)
    small = items[: max(300, len(items) // 10)]
    tables = []
    last_high: dict[int, list[int]] = {}
    for concurrency, batch in ((200, items), (1, small)):
        table = Table(
            f"12. drain {len(batch):,} msgs, burst worker c={concurrency}",
            "msg/s",
            base_label="plain drain",
        )
        plain = f"c={concurrency}, plain queue (default level only)"
        three = f"c={concurrency}, 3 levels (1/3 each)"
        table.row(plain, LEANMQ_ASYNC)
        table.row(three, LEANMQ_ASYNC, base=plain)
        for run_no in range(cfg.runs):
            for name, levels in ((plain, False), (three, True))[:: 1 if run_no % 2 == 0 else -1]:
                srv.flush()
                res = run_async(cfg, _drain, srv.url, batch, levels, concurrency)
                table.get(name).values.append(len(batch) / res["elapsed"])  # type: ignore[union-attr]
                if levels:
                    last_high.setdefault(concurrency, []).append(res["last_high"])
            print(f"  priorities c={concurrency} run {run_no + 1}/{cfg.runs} done")
        ideal = len(batch) - 2 * (len(batch) // 3)
        table.notes.append(
            f"3 levels: the last of the {ideal:,} high messages ran as number "
            f"{max(last_high[concurrency]):,} (ideal {ideal:,}: all high ones first)"
        )
        tables.append(table)
    srv.flush()
    return section(NAME, TITLE, tables, messages=len(items))


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
