"""Latency from send to handler start at offered rates of 100, 500, 2000 and 10000 msg/s.

A producer paces itself (``anyio.sleep`` until the next message is due; messages that
fell due together go out in one pipeline) for ``--latency-seconds`` per rate; each payload
carries ``time.perf_counter_ns()`` taken just before its XADD is written, and the consumer
subtracts it from the clock when the handler starts. Producer and consumer share one
process (and, for the async ones, one event loop), so the clock is the same monotonic
clock. Reported: p50, p99 and max in ms (median over runs), and the rate achieved.

Compared, same server, same run:

* ceiling: a plain ``redis.asyncio`` loop: XREADGROUP COUNT 1000 BLOCK 100, stamp,
  await the no-op handler for each entry, one XACK per batch;
* leanmq_async: a running worker (not burst) at concurrency 500, no-op handler;
* leanmq 0.2: its sync ``get_messages(count=100, block_for_seconds=1)`` + ack loop in the
  main thread; the producer (same pacing, ``time.sleep``) runs in a thread.

Run alone: ``python -m benchmarks.latency [--latency-seconds S] [--runs N] [--quick]``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import redis
import redis.asyncio as aioredis

from benchmarks._common import (
    CEILING,
    LEANMQ_ASYNC,
    LEANMQ_SYNC,
    Config,
    Server,
    Table,
    leanmq02,
    make_payload,
    median,
    percentile,
    run_async,
    section,
    standalone,
)
from benchmarks._consumers import lmq_names, noop
from leanmq_async import LeanMQ
from leanmq_async.envelope import get_codec

NAME = "latency"
TITLE = "5. Latency send -> handler start"
CONCURRENCY = 500
KINDS = {
    "plain": (CEILING, "{r:,}/s plain XREADGROUP BLOCK loop"),
    "lmq": (LEANMQ_ASYNC, "{r:,}/s worker, concurrency=500"),
    "sync": (LEANMQ_SYNC, "{r:,}/s sync get_messages(100) loop"),
}
CATCH_UP_S = 60.0


def row_name(kind: str, rate: int) -> str:
    return KINDS[kind][1].format(r=rate)


# -- producers ----------------------------------------------------------------------------


async def produce(url: str, stream: str, rate: int, seconds: float) -> dict[str, Any]:
    """Send ``rate * seconds`` leanmq_async envelopes (plain XADD, as send_message does)."""
    codec = get_codec("json")
    r = aioredis.Redis.from_url(url)
    total = max(1, int(rate * seconds))
    sent = 0
    try:
        await r.ping()
        t0 = time.perf_counter()
        while sent < total:
            now = time.perf_counter()
            due = min(total, int((now - t0) * rate) + 1) - sent
            if due <= 0:
                await anyio.sleep(t0 + sent / rate - now)
                continue
            due = min(due, 1000)
            if due == 1:
                payload = make_payload(sent)
                payload["t"] = time.perf_counter_ns()
                await r.xadd(stream, {codec.field: codec.encode(payload)[1]})
            else:
                async with r.pipeline(transaction=False) as pipe:
                    for i in range(sent, sent + due):
                        payload = make_payload(i)
                        payload["t"] = time.perf_counter_ns()
                        pipe.xadd(stream, {codec.field: codec.encode(payload)[1]})
                    await pipe.execute()
            sent += due
        return {"sent": sent, "send_seconds": time.perf_counter() - t0}
    finally:
        await r.aclose()


def produce_02(port: int, stream: str, rate: int, seconds: float, out: dict[str, Any]) -> None:
    """The same pacing with a sync client, in LeanMQ 0.2's format (for its consumer)."""
    r = redis.Redis(host="127.0.0.1", port=port)
    total = max(1, int(rate * seconds))
    sent = 0
    t0 = time.perf_counter()
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - t0) * rate) + 1) - sent
        if due <= 0:
            time.sleep(t0 + sent / rate - now)
            continue
        due = min(due, 1000)
        pipe = r.pipeline(transaction=False)
        for i in range(sent, sent + due):
            body = make_payload(i)
            body["t"] = time.perf_counter_ns()
            body["_metadata"] = {"id": str(uuid.uuid4()), "timestamp": time.time(), "ttl": None}
            pipe.xadd(stream, {"data": json.dumps(body)}, maxlen=100000)
        pipe.execute()
        sent += due
    out.update(sent=sent, send_seconds=time.perf_counter() - t0)
    r.close()


# -- consumers ----------------------------------------------------------------------------


async def plain_latency(url: str, rate: int, seconds: float) -> dict[str, Any]:
    stream, group = "plain:latency", "g"
    total = max(1, int(rate * seconds))
    r = aioredis.Redis.from_url(url)
    await r.xgroup_create(stream, group, "0", mkstream=True)
    decode = msgspec.json.decode
    lat: list[int] = []
    produced: dict[str, Any] = {}

    async def consume() -> None:
        deadline = None
        while len(lat) < total:
            if produced and deadline is None:
                deadline = time.perf_counter() + CATCH_UP_S
            if deadline and time.perf_counter() > deadline:
                return
            reply = await r.xreadgroup(group, "c1", {stream: ">"}, count=1000, block=100)
            if not reply:
                continue
            entries = reply[0][1]
            for _, fields in entries:
                payload = decode(fields[b"j"])["p"]
                lat.append(time.perf_counter_ns() - payload["t"])
                await noop(payload)
            await r.xack(stream, group, *[sid for sid, _ in entries])

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            t0 = time.perf_counter()
            produced.update(await produce(url, stream, rate, seconds))
        produced["total_seconds"] = time.perf_counter() - t0
    finally:
        await r.aclose()
    return {**produced, "lat": lat}


async def lmq_latency(url: str, rate: int, seconds: float) -> dict[str, Any]:
    total = max(1, int(rate * seconds))
    stream, _, _ = lmq_names("latency")
    lat: list[int] = []
    got_all = anyio.Event()
    async with LeanMQ(url, prefix="bench:") as mq:
        q = mq.queue("latency")

        @q.handler(concurrency=CONCURRENCY)
        async def handler(payload: Any) -> None:
            lat.append(time.perf_counter_ns() - payload["t"])
            if len(lat) == total:
                got_all.set()

        async with mq.worker():
            t0 = time.perf_counter()
            produced = await produce(url, stream, rate, seconds)
            with anyio.move_on_after(CATCH_UP_S):
                await got_all.wait()
            produced["total_seconds"] = time.perf_counter() - t0
    return {**produced, "lat": lat}


def sync_latency(srv: Server, rate: int, seconds: float) -> dict[str, Any]:
    total = max(1, int(rate * seconds))
    mq = leanmq02(srv, "bench02:")
    q, _ = mq.create_queue_pair("latency")
    produced: dict[str, Any] = {}
    lat: list[int] = []
    thread = threading.Thread(target=produce_02, args=(srv.port, q.name, rate, seconds, produced))
    t0 = time.perf_counter()
    thread.start()
    deadline = None
    try:
        while len(lat) < total:
            if produced and deadline is None:
                deadline = time.perf_counter() + CATCH_UP_S
            if deadline and time.perf_counter() > deadline:
                break
            messages = q.get_messages(count=100, block_for_seconds=1, consumer_id="c1")
            now = time.perf_counter_ns
            lat.extend(now() - m.data["t"] for m in messages)
            if messages:
                q.acknowledge_messages([m.id for m in messages])
    finally:
        thread.join()
        mq.close()
    produced["total_seconds"] = time.perf_counter() - t0
    return {**produced, "lat": lat}


# -- the benchmark ------------------------------------------------------------------------


def summarise(res: dict[str, Any], rate: int, seconds: float) -> dict[str, float]:
    lat = sorted(x / 1e6 for x in res["lat"])
    total = max(1, int(rate * seconds))
    return {
        "p50": percentile(lat, 50),
        "p90": percentile(lat, 90),
        "p99": percentile(lat, 99),
        "max": lat[-1] if lat else float("nan"),
        "mean": sum(lat) / len(lat) if lat else float("nan"),
        "received": len(lat),
        "expected": total,
        "offered_rate": rate,
        "achieved_send_rate": res["sent"] / res["send_seconds"],
        "handled_rate": len(lat) / res["total_seconds"],
    }


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    seconds = cfg.latency_seconds
    metrics = ("p50", "p99", "max")
    tables = {
        m: Table(f"5. latency {m}", "ms", higher_is_better=False, fmt="{:,.2f}") for m in metrics
    }
    for rate in cfg.rates:
        for kind in ("plain", "lmq", "sync"):
            for t in tables.values():
                t.row(
                    row_name(kind, rate),
                    KINDS[kind][0],
                    ceiling=row_name("plain", rate) if kind != "plain" else None,
                    sync=row_name("sync", rate) if kind == "lmq" else None,
                    extra={"runs": []},
                )
    for run_no in range(cfg.runs):
        steps = [(kind, rate) for rate in cfg.rates for kind in ("plain", "lmq", "sync")]
        k = run_no % 3
        steps = [
            s
            for rate in cfg.rates
            for s in (
                [(kd, rate) for kd in ("plain", "lmq", "sync")][k:]
                + [(kd, rate) for kd in ("plain", "lmq", "sync")][:k]
            )
        ]
        for kind, rate in steps:
            srv.flush()
            if kind == "plain":
                res = run_async(cfg, plain_latency, srv.url, rate, seconds)
            elif kind == "lmq":
                res = run_async(cfg, lmq_latency, srv.url, rate, seconds)
            else:
                res = sync_latency(srv, rate, seconds)
            summary = summarise(res, rate, seconds)
            for m, t in tables.items():
                row = t.get(row_name(kind, rate))
                assert row is not None
                row.values.append(summary[m])
                if m == "p50":
                    row.extra["runs"].append({k2: round(v, 3) for k2, v in summary.items()})
        print(f"  latency run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    p50 = tables["p50"]
    for row in p50.rows:
        runs = row.extra["runs"]
        handled = median([r["handled_rate"] for r in runs])
        sent = median([r["achieved_send_rate"] for r in runs])
        short = [r for r in runs if r["received"] < r["expected"]]
        row.note = f"sent {sent:,.0f}/s, handled {handled:,.0f}/s" + (
            f", {len(short)} run(s) incomplete" if short else ""
        )
    for m in ("p99", "max"):
        for row in tables[m].rows:
            row.extra = {}
            row.note = p50.get(row.name).note  # type: ignore[union-attr]
    p50.notes.append(
        f"{seconds:g} s per rate; 'handled' counts until the last message arrived: when it is "
        "below the offered rate the consumer saturated and the queue grew"
    )
    return section(NAME, TITLE, list(tables.values()), merged=[0, 1, 2])


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
