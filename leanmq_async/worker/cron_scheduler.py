"""The worker's periodic-job scheduler: one task that enqueues each job's runs on time.

It sleeps until the next tick of any job (on the Redis clock, estimated locally; Redis
confirms in the tick script), then calls ``lua/cron_tick.lua`` for it: of all the workers
calling for one tick, one enqueues the run. No polling: an idle worker with 100 jobs
wakes once per due tick (and at least every minute, to re-check).

At start each job is described in its state hash and, on its first start ever, its last
tick is set to the latest tick before now (a new job runs from the next tick on). A job
whose next tick is already past (no worker ran it) is due at once: the latest tick
passed is run once (``missed="run_once"``) or recorded as skipped (``missed="skip"``).
"""

from __future__ import annotations

import contextlib
import math
import random
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from leanmq_async._log import get_logger
from leanmq_async.exceptions import LeanMQError

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.cron import CronJob
    from leanmq_async.registration import Handler

__all__ = ["CronScheduler"]

_MAX_SLEEP = 60.0
_RETRY_MS = 1000

ENQUEUED, DONE, SKIPPED, NOT_DUE = 1, 0, 2, 3


class CronScheduler:
    """Schedules the periodic jobs among a worker's handlers (see the module docstring)."""

    def __init__(self, mq: LeanMQ, jobs: list[CronJob], nudge: Callable[[str], None]) -> None:
        self.mq = mq
        self.jobs = jobs
        self.nudge = nudge
        self.log = get_logger("leanmq_async.worker")
        self.next_ms: dict[str, int] = {}  # job -> the tick it waits for
        self.wake_ms: dict[str, float] = {}  # job -> not before (a retry, a not-due tick)
        self.enqueued = 0
        self.skipped = 0
        self.wakeups = 0  # loop passes: one per due tick (or per minute), never a busy poll

    @classmethod
    def for_handlers(
        cls, mq: LeanMQ, handlers: list[Handler], nudge: Callable[[str], None]
    ) -> CronScheduler | None:
        """A scheduler for the jobs whose handlers a worker runs (None: there are none)."""
        served = {id(h) for h in handlers}
        jobs = [j for j in mq.cron_jobs.values() if id(j.handler) in served]
        if not jobs:
            return None
        # Each job is a queue with its own blocking reader: one pooled connection each.
        pool = mq.connection_settings.max_connections
        if len(handlers) + 8 > pool:
            get_logger("leanmq_async.worker").warning(
                "connection_pool_small",
                handlers=len(handlers),
                cron_jobs=len(jobs),
                max_connections=pool,
                hint="each handler (each periodic job too) blocks one connection while it "
                "waits for messages: pass LeanMQ(connection=ConnectionSettings("
                f"max_connections={len(handlers) + 16}))",
            )
        return cls(mq, jobs, nudge)

    async def run(self) -> None:
        """Register the jobs, then enqueue their runs until cancelled."""
        await self._register()
        while True:
            self.wakeups += 1
            now = await self._now()
            for job in self.jobs:
                if self.next_ms[job.name] <= now and self.wake_ms.get(job.name, 0) <= now:
                    await self.tick(job, now)
            now = await self._now()
            soonest = min(max(self.next_ms[j.name], self.wake_ms.get(j.name, 0)) for j in self.jobs)
            await anyio.sleep(min(max(soonest - now, 1) / 1000, _MAX_SLEEP))

    async def _now(self) -> float:
        """The Redis clock estimate; during an outage, from the last measurement (the tick
        script checks it against Redis's own clock anyway)."""
        try:
            return await self.mq.store.redis_now_ms()
        except LeanMQError:
            return await self.mq.store.redis_now_ms(max_age=math.inf)

    async def _register(self) -> None:
        pending = list(self.jobs)
        while pending:
            job = pending[0]
            try:
                now = int(await self._now())
                last = await self.mq.store.cron_register(
                    job.queue.keys, job.description(), job.schedule.latest_at_or_before(now)
                )
            except LeanMQError as exc:
                self.log.warning("cron_register_failed", job=job.name, error=str(exc))
                await anyio.sleep(_RETRY_MS / 1000)
                continue
            self.next_ms[job.name] = job.schedule.next_after(last)
            pending.pop(0)
        self.log.info("cron_started", jobs=sorted(j.name for j in self.jobs))

    async def tick(self, job: CronJob, now: float) -> int:
        """Ask Redis to enqueue ``job``'s due tick; return the script's status."""
        schedule = job.schedule
        tick = self.next_ms[job.name]
        latest = schedule.latest_at_or_before(int(now))
        if latest > tick:  # ticks were missed: the latest one stands for them all
            self.log.info("cron_missed_ticks", job=job.name, first=tick, latest=latest)
            tick = latest
        nxt = schedule.next_after(tick)
        delay = random.randint(0, job.jitter_ms) if job.jitter_ms else 0
        codec = self.mq.codec
        mid, body = codec.encode({"job": job.name, "tick": tick}, f"{job.name}:{tick}")
        try:
            result = await self.mq.store.cron_tick(
                job.queue.keys, tick, nxt, job.late_ms, delay, codec.field, body,
                f"{mid}|{uuid.uuid4().hex}",
            )  # fmt: skip
        except LeanMQError as exc:
            self.log.warning("cron_tick_failed", job=job.name, tick=tick, error=str(exc))
            self.wake_ms[job.name] = now + _RETRY_MS
            return -1
        if result.status == NOT_DUE:  # our clock estimate runs ahead of Redis's
            self.wake_ms[job.name] = now + result.wait_ms
            with contextlib.suppress(LeanMQError):
                await self.mq.store.sync_clock()
            return NOT_DUE
        self.wake_ms.pop(job.name, None)
        self.next_ms[job.name] = schedule.next_after(max(tick, result.last))
        if result.status == ENQUEUED:
            self.enqueued += 1
            self.log.debug("cron_enqueued", job=job.name, tick=tick, delay_ms=delay)
            if delay:
                self.nudge(job.queue.stream)
        elif result.status == SKIPPED:
            self.skipped += 1
            self.log.info("cron_skipped", job=job.name, tick=tick, reason="missed")
        return result.status
