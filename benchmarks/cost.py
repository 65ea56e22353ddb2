"""Redis commands and CPU per message in a steady drain.

For each consumer, the queue is pre-filled, then ``INFO commandstats`` (calls summed over
every command, INFO itself left out) and ``INFO cpu`` (``used_cpu_sys + used_cpu_user``
of redis-server) are read before and after the drain, and the client's own CPU time
(``time.process_time()``) is taken around it; each delta is divided by the messages.
Commands run inside Lua scripts are counted by Redis as commands (EVALSHA counts too).
Same server, same run:

* ceiling: the plain ``asyncio.create_task`` drain (XREADGROUP 1000 + XACK per batch);
* leanmq_async: the burst worker at concurrency 500 until it exits by itself (so its
  startup, the maintenance loop and the burst-mode exit checks are included);
* leanmq 0.2: its sync ``get_messages(100)`` + ack loop (one XPENDING per message).

Run alone: ``python -m benchmarks.cost [--runs N] [--messages N] [--quick]``.
"""

from __future__ import annotations

import time
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
    payloads,
    run_async,
    section,
    standalone,
)
from benchmarks._consumers import PLAIN_MODES, lmq_drain, lmq_names, plain_drain, sync_drain

NAME = "cost"
TITLE = "7. Redis commands and CPU per message (steady drain)"
CONCURRENCY = 500
KINDS = {
    "plain": (CEILING, PLAIN_MODES["tasks"]),
    "lmq": (LEANMQ_ASYNC, "worker burst c=500 (startup and exit included)"),
    "sync": (LEANMQ_SYNC, "sync get_messages(100) + acknowledge loop"),
}


def measure(cfg: Config, srv: Server, items: Sequence[Any], kind: str) -> dict[str, Any]:
    srv.flush()
    n = len(items)
    mq = None
    if kind == "plain":
        stream = "plain:drain"
        srv.admin.xgroup_create(stream, "g", "0", mkstream=True)
        fill_envelopes(srv, stream, items)
    elif kind == "lmq":
        stream, _, _ = lmq_names()
        fill_envelopes(srv, stream, items)
    else:
        mq = leanmq02(srv, "bench02:")
        q, _ = mq.create_queue_pair("drain")
        fill_leanmq02(srv, q.name, items)
    calls0, cpu0 = srv.counters()
    c0 = time.process_time()
    if kind == "plain":
        res = run_async(cfg, plain_drain, srv.url, stream, "g", "c1", "tasks", create_group=False)
    elif kind == "lmq":
        res = run_async(cfg, lmq_drain, srv.url, None, CONCURRENCY)
    else:
        res = sync_drain(q)
    client_cpu = time.process_time() - c0
    calls1, cpu1 = srv.counters()
    if mq is not None:
        mq.close()
    if res["handled"] != n:
        raise AssertionError(f"{kind}: handled {res['handled']}, expected {n}")
    delta = {k: v - calls0.get(k, 0) for k, v in calls1.items() if k != "info"}
    delta = {k: v for k, v in delta.items() if v}
    return {
        "commands": sum(delta.values()) / n,
        "redis_cpu_us": (cpu1 - cpu0) / n * 1e6,
        "client_cpu_us": client_cpu / n * 1e6,
        "breakdown": {k: round(v / n, 4) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])},
    }


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    items = payloads(cfg.messages)
    metrics = {
        "commands": Table("7. cost per message commands", "cmd/msg", False, fmt="{:,.3f}"),
        "redis_cpu_us": Table("7. cost per message redis-cpu", "us/msg", False, fmt="{:,.1f}"),
        "client_cpu_us": Table("7. cost per message client-cpu", "us/msg", False, fmt="{:,.1f}"),
    }
    for kind, (label, name) in KINDS.items():
        for t in metrics.values():
            t.row(
                name,
                label,
                ceiling=KINDS["plain"][1] if kind != "plain" else None,
                sync=KINDS["sync"][1] if kind == "lmq" else None,
            )
    breakdowns: dict[str, Any] = {}
    for run_no in range(cfg.runs):
        kinds = list(KINDS)
        k = run_no % len(kinds)
        for kind in kinds[k:] + kinds[:k]:
            res = measure(cfg, srv, items, kind)
            for m, t in metrics.items():
                t.get(KINDS[kind][1]).values.append(res[m])  # type: ignore[union-attr]
            breakdowns.setdefault(KINDS[kind][1], res["breakdown"])
        print(f"  cost run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    first = metrics["commands"]
    for name, bd in breakdowns.items():
        top = ", ".join(f"{cmd} {v:.3f}" for cmd, v in list(bd.items())[:6])
        first.notes.append(f"{name}: {top}")
        first.get(name).extra["breakdown_per_msg"] = bd  # type: ignore[union-attr]
    sec = section(NAME, TITLE, list(metrics.values()), merged=[0, 1, 2], messages=len(items))
    return sec


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
