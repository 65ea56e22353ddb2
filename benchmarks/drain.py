"""Drain throughput in one process: a pre-filled queue of N messages, no-op async handler.

Compares, on the same private Redis and in the same run (see ``_consumers.py``):

* ceiling (the reference of every ratio): bare ``redis.asyncio`` XREADGROUP COUNT 1000
  (non-blocking) + one ``asyncio.create_task`` per message + one XACK per batch; plus two
  variants: one anyio task-group child per message, and the handler awaited in a loop;
* leanmq_async: the worker in burst mode (``block_ms=100``) at concurrency 100, 500, 1000;
  timed until every message is acknowledged (burst mode's exit is reported apart);
* leanmq 0.2: sync ``get_messages(count=100)`` + ``acknowledge_messages`` loop in the
  main thread (one XPENDING per message read).

Run alone: ``python -m benchmarks.drain [--runs N] [--messages N] [--quick]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks._common import (
    CEILING,
    LEANMQ_ASYNC,
    LEANMQ_SYNC,
    Config,
    Server,
    Table,
    fill_envelopes,
    fill_leanmq02,
    leanmq02,
    median,
    payloads,
    run_async,
    section,
    standalone,
)
from benchmarks._consumers import (
    PLAIN_MODES,
    check_counts,
    lmq_drain,
    lmq_names,
    plain_drain,
    sync_drain,
)

NAME = "drain"
TITLE = "3. Drain, one process"
SYNC_ROW = "sync get_messages(100) + acknowledge loop"


def lmq_row(c: int) -> str:
    return f"worker burst, concurrency={c}"


def measure_plain(cfg: Config, srv: Server, items: Sequence[Any], mode: str) -> float:
    srv.flush()
    stream = "plain:drain"
    fill_envelopes(srv, stream, items)
    res = run_async(cfg, plain_drain, srv.url, stream, "g", "c1", mode)
    check_counts(f"plain {mode}", res["handled"], len(items))
    return len(items) / res["elapsed"]


def measure_lmq(cfg: Config, srv: Server, items: Sequence[Any], c: int) -> dict[str, Any]:
    srv.flush()
    stream, _, _ = lmq_names()
    fill_envelopes(srv, stream, items)
    res = run_async(cfg, lmq_drain, srv.url, len(items), c)
    check_counts(f"leanmq_async c={c}", res["handled"], len(items))
    res["rate"] = len(items) / res["elapsed"]
    return res


def measure_sync(srv: Server, items: Sequence[Any]) -> float:
    srv.flush()
    mq = leanmq02(srv, "bench02:")
    try:
        q, _ = mq.create_queue_pair("drain")
        fill_leanmq02(srv, q.name, items)
        res = sync_drain(q)
    finally:
        mq.close()
    check_counts("leanmq 0.2", res["handled"], len(items))
    return len(items) / res["elapsed"]


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    items = payloads(cfg.messages)
    table = Table(f"3. drain {len(items):,} msgs, 1 process", "msg/s")
    ceiling = PLAIN_MODES["tasks"]
    for mode in ("tasks", "anyio", "loop"):
        table.row(PLAIN_MODES[mode], CEILING, ceiling=ceiling if mode != "tasks" else None)
    for c in cfg.concurrencies:
        table.row(
            lmq_row(c),
            LEANMQ_ASYNC,
            ceiling=ceiling,
            sync=SYNC_ROW,
            extra={"exit_tail_s": [], "last_handler_s": []},
        )
    table.row(SYNC_ROW, LEANMQ_SYNC, ceiling=ceiling)
    for run_no in range(cfg.runs):
        steps: list[tuple[str, Any]] = [
            (PLAIN_MODES[m], (lambda m=m: measure_plain(cfg, srv, items, m)))
            for m in ("tasks", "anyio", "loop")
        ]
        steps += [
            (lmq_row(c), (lambda c=c: measure_lmq(cfg, srv, items, c))) for c in cfg.concurrencies
        ]
        steps.append((SYNC_ROW, lambda: measure_sync(srv, items)))
        k = run_no % len(steps)
        for name, step in steps[k:] + steps[:k]:
            res = step()
            row = table.get(name)
            assert row is not None
            if isinstance(res, dict):
                row.values.append(res["rate"])
                row.extra["exit_tail_s"].append(round(res["exit_tail_s"], 4))
                row.extra["last_handler_s"].append(round(res["last_handler_s"], 4))
            else:
                row.values.append(res)
        print(f"  drain run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    tails = [t for r in table.rows for t in r.extra.get("exit_tail_s", [])]
    table.notes.append(
        "leanmq_async is timed until the last message is acknowledged; burst mode then takes "
        f"a median {median(tails) * 1000:.0f} ms more to return (one empty read of "
        "block_ms=100 plus the pending check; with the default block_ms=2000 this is ~2 s)"
    )
    table.notes.append("ceiling decodes each JSON envelope with msgspec; leanmq 0.2 uses json")
    return section(NAME, TITLE, [table], messages=len(items))


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
