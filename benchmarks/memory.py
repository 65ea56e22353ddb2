"""Long-run memory: the consumer's RSS sampled while it drains 200,000 messages (1,000,000
with ``--long``).

The parent pre-fills the queue, then runs each consumer in a child process of its own
(so only the consumer's memory is measured), which reads ``VmRSS`` from
``/proc/self/status`` before it starts and every ``messages / 10`` messages handled (every
100,000 with ``--long``), and once more when it has drained everything. Reported: RSS at
the first sample (warmed up), at the end, and the growth between them; a steady worker
should not grow. One run (memory does not vary from run to run like throughput does).

* ceiling: the plain ``asyncio.create_task`` drain (XREADGROUP 1000 + XACK per batch);
* leanmq_async: ``run_worker(burst=True, block_ms=100)`` at concurrency 1000;
* leanmq 0.2: its sync ``get_messages(100)`` + ack loop (``--long`` only: at its speed a
  default run would take most of the time budget).

Run alone: ``python -m benchmarks.memory [--long] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis

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
from benchmarks._consumers import PLAIN_MODES, lmq_names, noop

NAME = "memory"
TITLE = "8. Long-run memory (consumer RSS)"
REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 1000
KINDS = {
    "plain": (CEILING, PLAIN_MODES["tasks"]),
    "lmq": (LEANMQ_ASYNC, "worker burst, concurrency=1000"),
    "sync": (LEANMQ_SYNC, "sync get_messages(100) + acknowledge loop"),
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children -----------------------------------------------------------------------------


class Sampler:
    def __init__(self, every: int) -> None:
        self.every = every
        self.next = every
        self.t0 = time.perf_counter()
        self.samples: list[tuple[int, float, float]] = [(0, rss_mb(), 0.0)]

    def tick(self, count: int) -> None:
        if count >= self.next:
            self.samples.append((count, rss_mb(), time.perf_counter() - self.t0))
            self.next += self.every

    def done(self, count: int) -> None:
        if self.samples[-1][0] != count:
            self.samples.append((count, rss_mb(), time.perf_counter() - self.t0))


async def child_plain(url: str, sampler: Sampler) -> int:
    r = aioredis.Redis.from_url(url)
    decode = msgspec.json.decode
    handled = 0
    try:
        while True:
            reply = await r.xreadgroup("g", "c1", {"plain:drain": ">"}, count=1000)
            if not reply or not reply[0][1]:
                return handled
            entries = reply[0][1]
            tasks = [asyncio.create_task(noop(decode(f[b"j"])["p"])) for _, f in entries]
            await asyncio.gather(*tasks)
            await r.xack("plain:drain", "g", *[sid for sid, _ in entries])
            handled += len(entries)
            sampler.tick(handled)
    finally:
        await r.aclose()


async def child_lmq(url: str, sampler: Sampler) -> int:
    from leanmq_async import LeanMQ

    count = 0
    async with LeanMQ(url, prefix="bench:") as mq:
        q = mq.queue("drain")

        @q.handler(concurrency=CONCURRENCY)
        async def handler(payload: Any) -> None:
            nonlocal count
            count += 1
            sampler.tick(count)

        await mq.run_worker(burst=True, block_ms=100)
    return count


def child_sync(url: str, sampler: Sampler) -> int:
    import leanmq

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    mq = leanmq.LeanMQ(redis_host="127.0.0.1", redis_port=port, prefix="bench02:")
    q, _ = mq.create_queue_pair("drain")
    handled = 0
    while True:
        messages = q.get_messages(count=100, consumer_id="c1")
        if not messages:
            return handled
        q.acknowledge_messages([m.id for m in messages])
        handled += len(messages)
        sampler.tick(handled)


def child(kind: str, url: str, every: int) -> None:
    quiet_logging()
    sampler = Sampler(every)
    if kind == "plain":
        handled = anyio.run(child_plain, url, sampler, backend="asyncio")
    elif kind == "lmq":
        handled = anyio.run(child_lmq, url, sampler, backend="asyncio")
    else:
        handled = child_sync(url, sampler)
    sampler.done(handled)
    print(
        json.dumps(
            {
                "handled": handled,
                "samples": sampler.samples,
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


# -- parent -------------------------------------------------------------------------------


# LeanMQ 0.2 writes with XADD MAXLEN ~ 100000: its stream cannot hold more than that.
SYNC_CAP = 100_000


def measure(srv: Server, n: int, kind: str, every: int) -> dict[str, Any]:
    srv.flush()
    if kind == "sync":
        n = min(n, SYNC_CAP)
    chunk = 20_000
    for start in range(0, n, chunk):
        items = payloads(min(chunk, n - start))
        if kind == "plain":
            if start == 0:
                srv.admin.xgroup_create("plain:drain", "g", "0", mkstream=True)
            fill_envelopes(srv, "plain:drain", items)
        elif kind == "lmq":
            fill_envelopes(srv, lmq_names()[0], items)
        else:
            if start == 0:
                mq = leanmq02(srv, "bench02:")
                q, _ = mq.create_queue_pair("drain")
                stream = q.name
                mq.close()
            fill_leanmq02(srv, stream, items)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--child",
            kind,
            "--url",
            srv.url,
            "--every",
            str(every),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    ).stdout
    res = json.loads(out.strip().splitlines()[-1])
    if res["handled"] != n:
        raise AssertionError(f"{kind}: handled {res['handled']}, expected {n}")
    return res


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    n = cfg.memory_messages
    every = 100_000 if n >= 1_000_000 else max(1000, n // 10)
    kinds = ["plain", "lmq"] + (["sync"] if cfg.long else [])
    tables = {
        "warm": Table("8. RSS warm", "MB", False, fmt="{:,.1f}"),
        "end": Table("8. RSS end", "MB", False, fmt="{:,.1f}"),
        "growth": Table("8. RSS growth", "MB", False, fmt="{:,.1f}"),
    }
    for kind in kinds:
        for key, t in tables.items():
            t.row(
                KINDS[kind][1],
                KINDS[kind][0],
                ceiling=KINDS["plain"][1] if kind != "plain" and key != "growth" else None,
                sync=KINDS["sync"][1] if kind == "lmq" and "sync" in kinds else None,
            )
    for kind in kinds:
        res = measure(srv, n, kind, every)
        samples = res["samples"]
        warm = samples[1][1] if len(samples) > 1 else samples[0][1]
        end = samples[-1][1]
        name = KINDS[kind][1]
        tables["warm"].get(name).values.append(warm)  # type: ignore[union-attr]
        tables["end"].get(name).values.append(end)  # type: ignore[union-attr]
        tables["growth"].get(name).values.append(end - warm)  # type: ignore[union-attr]
        row = tables["warm"].get(name)
        assert row is not None
        row.extra["samples"] = [
            {"messages": c, "rss_mb": round(m, 2), "seconds": round(s, 2)} for c, m, s in samples
        ]
        row.extra["maxrss_mb"] = res["maxrss_mb"]
        secs = samples[-1][2]
        row.note = (
            f"start {samples[0][1]:.1f} MB, {samples[-1][0] / secs:,.0f} msg/s over {secs:.0f} s"
            if secs
            else ""
        )
        print(f"  memory: {name} done")
    srv.flush()
    tables["warm"].notes.append(
        f"{n:,} messages, RSS sampled every {every:,}; 'warm' = at the first sample, "
        "'growth' = end - warm"
        + (
            f"; leanmq 0.2 drains {min(n, SYNC_CAP):,} (it trims its streams to ~{SYNC_CAP:,})"
            if cfg.long
            else "; leanmq 0.2 only with --long"
        )
    )
    return section(
        NAME, TITLE, list(tables.values()), merged=[0, 1, 2], messages=n, sample_every=every
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--child" in args:
        p = argparse.ArgumentParser()
        p.add_argument("--child", required=True)
        p.add_argument("--url", required=True)
        p.add_argument("--every", type=int, required=True)
        a = p.parse_args(args)
        child(a.child, a.url, a.every)
        return
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
