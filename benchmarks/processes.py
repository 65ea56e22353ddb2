"""Drain throughput with N consumer processes (1, 2, 4) on one pre-filled queue.

The parent fills the queue, spawns N child processes and waits until each is imported,
connected and parked on a "go" list; then it starts the clock, releases them all, and
polls ``XINFO GROUPS`` every 5 ms until the group has read the last entry and nothing is
pending. Total msg/s = messages / that time. Compared per N, same server, same run:

* ceiling: N plain consumers (``redis.asyncio`` XREADGROUP 1000 + ``asyncio.create_task``
  per message + XACK per batch), each exiting at its first empty read;
* leanmq_async: N processes each running ``mq.worker(burst=True, block_ms=100)`` at
  concurrency 500 (startup counts: it happens after "go");
* leanmq 0.2: N processes each running its sync ``get_messages(100)`` + ack loop.

The machine has few cores: with 2 cores, Redis itself competes with the consumers, so
more processes can be slower. Run alone: ``python -m benchmarks.processes``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import redis

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
    quiet_logging,
    section,
    standalone,
)
from benchmarks._consumers import lmq_drain, lmq_names, plain_drain, sync_drain

NAME = "processes"
TITLE = "4. Drain with N worker processes"
REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 500
READY, GO = "bench:ready", "bench:go"
PLAIN_STREAM, PLAIN_GROUP = "plain:drain", "g"
SYNC_PREFIX, SYNC_QUEUE = "bench02:", "drain"
KINDS = {
    "plain": (CEILING, "{n} plain consumer process(es)"),
    "lmq": (LEANMQ_ASYNC, "{n} worker process(es), concurrency=500 each"),
    "sync": (LEANMQ_SYNC, "{n} leanmq 0.2 process(es)"),
}


def row_name(kind: str, n: int) -> str:
    return KINDS[kind][1].format(n=n)


# -- child --------------------------------------------------------------------------------


def child(kind: str, url: str, index: int, concurrency: int) -> None:
    quiet_logging()
    admin = redis.Redis.from_url(url, socket_timeout=None)
    if kind == "sync":
        mq = leanmq02_from_url(url)
        q, _ = mq.create_queue_pair(SYNC_QUEUE)
    admin.rpush(READY, index)
    admin.blpop([GO], timeout=300)
    if kind == "plain":
        res = anyio.run(
            plain_drain, url, PLAIN_STREAM, PLAIN_GROUP, f"c{index}", "tasks", backend="asyncio"
        )
        res["create_group"] = False
    elif kind == "lmq":
        res = anyio.run(_lmq_child, url, index, concurrency, backend="asyncio")
    else:
        res = sync_drain(q, consumer=f"c{index}")
    print(json.dumps({"index": index, "handled": res["handled"], "end": time.perf_counter()}))
    sys.stdout.flush()


async def _lmq_child(url: str, index: int, concurrency: int) -> dict[str, Any]:
    return await lmq_drain(url, None, concurrency, consumer_name=f"w{index}")


def leanmq02_from_url(url: str) -> Any:
    import leanmq

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return leanmq.LeanMQ(redis_host="127.0.0.1", redis_port=port, prefix=SYNC_PREFIX)


# -- parent -------------------------------------------------------------------------------


def measure(cfg: Config, srv: Server, items: Sequence[Any], kind: str, n: int) -> dict[str, Any]:
    srv.flush()
    if kind == "plain":
        stream, group = PLAIN_STREAM, PLAIN_GROUP
        srv.admin.xgroup_create(stream, group, "0", mkstream=True)
        last = fill_envelopes(srv, stream, items)
    elif kind == "lmq":
        stream, group, _ = lmq_names()
        last = fill_envelopes(srv, stream, items)
    else:
        mq = leanmq02(srv, SYNC_PREFIX)
        q, _ = mq.create_queue_pair(SYNC_QUEUE)
        stream, group = q.name, q.consumer_group
        last = fill_leanmq02(srv, stream, items)
        mq.close()
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.processes",
        "--child",
        kind,
        "--url",
        srv.url,
        "--concurrency",
        str(CONCURRENCY),
    ]
    procs = [
        subprocess.Popen([*cmd, "--index", str(i)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for i in range(n)
    ]
    try:
        for _ in range(n):
            if srv.admin.blpop([READY], timeout=60) is None:
                raise RuntimeError(f"{kind}: a child did not get ready within 60 s")
        t0 = time.perf_counter()
        srv.admin.rpush(GO, *["go"] * n)
        deadline = t0 + 600
        while True:
            if _drained(srv, stream, group, last):
                t_done = time.perf_counter()
                break
            if time.perf_counter() > deadline or any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"{kind} x{n}: the drain did not finish")
            time.sleep(0.005)
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    reports = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    handled = sum(r["handled"] for r in reports)
    if handled != len(items):
        raise AssertionError(f"{kind} x{n}: handled {handled}, expected {len(items)}")
    return {
        "rate": len(items) / (t_done - t0),
        "per_process": [r["handled"] for r in reports],
        "exit_tail_s": max(r["end"] for r in reports) - t_done,
    }


def _drained(srv: Server, stream: str, group: str, last: bytes) -> bool:
    try:
        groups = srv.admin.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    for g in groups:
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            return int(g["pending"]) == 0 and g["last-delivered-id"] == last
    return False


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    items = payloads(cfg.messages)
    table = Table(f"4. drain {len(items):,} msgs with N processes (total)", "msg/s")
    for n in cfg.processes:
        for kind in ("plain", "lmq", "sync"):
            table.row(
                row_name(kind, n),
                KINDS[kind][0],
                ceiling=row_name("plain", n) if kind != "plain" else None,
                sync=row_name("sync", n) if kind == "lmq" else None,
                extra={"per_process": [], "exit_tail_s": []},
            )
    for run_no in range(cfg.runs):
        steps = [(kind, n) for n in cfg.processes for kind in ("plain", "lmq", "sync")]
        k = run_no % len(steps)
        for kind, n in steps[k:] + steps[:k]:
            res = measure(cfg, srv, items, kind, n)
            row = table.get(row_name(kind, n))
            assert row is not None
            row.values.append(res["rate"])
            row.extra["per_process"].append(res["per_process"])
            row.extra["exit_tail_s"].append(round(res["exit_tail_s"], 4))
        print(f"  processes run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    base = table.get(row_name("lmq", cfg.processes[0]))
    if base and base.values:
        from benchmarks._common import median

        scale = [
            f"{n}: {median(table.get(row_name('lmq', n)).values) / median(base.values):.2f}x"  # type: ignore[union-attr]
            for n in cfg.processes
        ]
        table.notes.append("leanmq_async scaling vs 1 process: " + ", ".join(scale))
    table.notes.append(
        "clock starts when all N children are connected and released; child import time "
        "is excluded, worker startup is included; Redis shares the same cores"
    )
    return section(NAME, TITLE, [table], messages=len(items))


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--child" in args:
        p = argparse.ArgumentParser()
        p.add_argument("--child", required=True)
        p.add_argument("--url", required=True)
        p.add_argument("--index", type=int, required=True)
        p.add_argument("--concurrency", type=int, default=CONCURRENCY)
        a = p.parse_args(args)
        child(a.child, a.url, a.index, a.concurrency)
        return
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
