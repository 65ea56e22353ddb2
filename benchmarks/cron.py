"""Periodic jobs: the tick script's cost per call, and a worker's CPU with 100 jobs.

* ``cron_tick.lua`` per call, sequential, one client: a call that enqueues the run (the
  first worker asking for a tick) and a call that finds the tick done (every other
  worker); the plain XADD of the same run message as the baseline;
* a worker's process CPU, idle (every job's next tick a minute away): 100 plain handlers
  (100 queues) against 100 jobs ``every=60`` (each job is a queue with its handler, so
  they cost what 100 queues cost: a blocking reader and a delayed-message mover each);
  the scheduler sleeps until the next tick, so the difference is the cost of scheduling
  when nothing is due;
* 100 jobs ``every=1`` in one worker: process CPU per run (schedule, tick script, read,
  handle, ack, record the outcome).

Run alone: ``python -m benchmarks.cron [--latency-seconds S] [--runs N]`` (S: seconds
per CPU measurement, at least 2).
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
    run_async,
    section,
    standalone,
)
from leanmq_async import ConnectionSettings, LeanMQ

NAME = "cron"
TITLE = "10. periodic jobs: tick script and scheduler cost"
CALLS = 2000
JOBS = 100
ENQUEUE = "cron_tick.lua, enqueues the run"
DONE = "cron_tick.lua, tick already done"
XADD = "plain XADD of the same message"
IDLE_NONE = f"idle worker, {JOBS} plain handlers"
IDLE_JOBS = f"idle worker, {JOBS} jobs every=60"
PER_RUN = f"{JOBS} jobs every=1, one worker"


async def tick_costs(url: str, calls: int) -> dict[str, float]:
    """Microseconds per call of each kind."""
    async with LeanMQ(url, prefix="benchcron:") as mq:
        keys = mq.queue("cron.bench").keys
        codec = mq.codec
        _, body = codec.encode({"job": "bench", "tick": 0}, "bench:0")
        await mq.store.load_scripts()
        sec, usec = await mq.redis.time()
        now = int(sec) * 1000 + int(usec) // 1000
        first = now - calls * 1000 - 1000
        spent = dict.fromkeys((ENQUEUE, DONE, XADD), 0.0)
        rounds, per = 10, max(1, calls // 10)
        tick = first
        for _ in range(rounds):  # interleaved, so a busy moment hits every kind alike
            t0 = time.perf_counter()
            for _ in range(per):
                tick += 1000
                await mq.store.cron_tick(keys, tick, tick + 1000, 0, 0, codec.field, body, "")
            spent[ENQUEUE] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(per):
                await mq.store.cron_tick(keys, first, first + 1000, 0, 0, codec.field, body, "")
            spent[DONE] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(per):
                await mq.store.xadd(keys.stream, codec.field, body)
            spent[XADD] += time.perf_counter() - t0
        out = {name: s / (rounds * per) * 1e6 for name, s in spent.items()}
    return out


async def worker_cpu(
    url: str, jobs: int, every: float, seconds: float, plain: int = 0
) -> dict[str, float]:
    """Process CPU ms per second of a worker with ``jobs`` jobs (or ``plain`` plain
    handlers), and the runs in that time."""
    runs = 0
    pool = ConnectionSettings(max_connections=jobs + plain + 16)  # a reader per handler
    async with LeanMQ(url, prefix=f"benchcron{jobs}x{every:g}:", connection=pool) as mq:
        for i in range(plain):

            @mq.queue(f"plain{i}").handler
            async def handle(data: Any) -> None:
                pass

        for i in range(jobs):

            @mq.cron(every=every, name=f"job{i}")
            async def job() -> None:
                nonlocal runs
                runs += 1

        async with mq.worker():
            await anyio.sleep(1.5)  # start-up and registration done
            runs, cpu0, t0 = 0, time.process_time(), time.perf_counter()
            await anyio.sleep(seconds)
            cpu, wall, done = time.process_time() - cpu0, time.perf_counter() - t0, runs
    return {
        "cpu_ms_per_s": cpu / wall * 1000,
        "runs": done,
        "cpu_ms_per_run": cpu * 1000 / max(done, 1),
    }


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    seconds = max(2.0, cfg.latency_seconds)
    calls = min(CALLS, cfg.messages)
    per_call = Table("10. cost per call", "us", higher_is_better=False, fmt="{:,.1f}")
    per_call.base_label = "XADD"
    for name in (ENQUEUE, DONE, XADD):
        per_call.row(name, LEANMQ_ASYNC, base=None if name == XADD else XADD)
    idle = Table("10. worker CPU", "CPU ms/s", higher_is_better=False, fmt="{:,.2f}")
    idle.base_label = "plain handlers"
    idle.row(IDLE_NONE, LEANMQ_ASYNC)
    idle.row(IDLE_JOBS, LEANMQ_ASYNC, base=IDLE_NONE)
    per_run = Table("10. CPU per run", "CPU ms/run", higher_is_better=False, fmt="{:,.3f}")
    per_run.row(PER_RUN, LEANMQ_ASYNC)
    for run_no in range(cfg.runs):
        srv.flush()
        for name, us in run_async(cfg, tick_costs, srv.url, calls).items():
            per_call.row(name, LEANMQ_ASYNC).values.append(us)
        srv.flush()
        none = run_async(cfg, worker_cpu, srv.url, 0, 60.0, seconds, JOBS)
        idle.row(IDLE_NONE, LEANMQ_ASYNC).values.append(none["cpu_ms_per_s"])
        srv.flush()
        some = run_async(cfg, worker_cpu, srv.url, JOBS, 60.0, seconds)
        idle.row(IDLE_JOBS, LEANMQ_ASYNC).values.append(some["cpu_ms_per_s"])
        srv.flush()
        busy = run_async(cfg, worker_cpu, srv.url, JOBS, 1.0, seconds)
        row = per_run.row(PER_RUN, LEANMQ_ASYNC)
        row.values.append(busy["cpu_ms_per_run"])
        row.note = f"{busy['runs']:,} runs in {seconds:g} s"
        print(f"  cron run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    per_call.notes.append(f"{calls:,} sequential calls per row, one client, one connection")
    idle.notes.append(
        f"process CPU over {seconds:g} s (a tick of the minutely jobs may fall in it)"
    )
    return section(NAME, TITLE, [per_call, idle, per_run])


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
