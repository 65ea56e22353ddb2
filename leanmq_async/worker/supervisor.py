"""The worker: runs every registered handler, the upkeep tasks, and a two-phase shutdown.

Run it three ways:

* ``await worker.serve()`` (or ``await mq.run_worker()``) until cancelled or ``stop()``;
  with ``await task_group.start(worker.serve)`` it returns once groups exist and loops run;
* ``async with mq.worker():`` around an application's lifetime (FastAPI lifespan, aiohttp
  cleanup_ctx): the worker runs in the background of the block; with ``burst=True``
  leaving the block waits for the drain, like ``run_worker(burst=True)``;
* ``leanmq-worker app:mq`` (see :mod:`leanmq_async.worker.cli`), which adds signals.

Start-up (groups, clock, scripts) is retried while Redis is unreachable, for
``startup_timeout`` seconds (``worker_start_retry``); then ``worker_start_failed`` and the
error is raised (the CLI exits 1).

Shutdown, whether by :meth:`Worker.stop` or by cancellation: no new reads; in-flight
handlers get ``grace_period`` seconds to finish; the rest are cancelled and their messages
stay pending for another worker; buffered acks are flushed. The worker never installs
signal handlers: that is the CLI's job, so embedding it in another app is safe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from leanmq_async._log import get_logger
from leanmq_async.exceptions import ConfigurationError, LeanMQConnectionError, LeanMQError
from leanmq_async.replies import text
from leanmq_async.worker.cancels import CancelListener
from leanmq_async.worker.maintenance import Maintenance
from leanmq_async.worker.read_hub import ReadHub
from leanmq_async.worker.runner import HandlerRunner, RunnerStats
from leanmq_async.worker.watchdog import LoopWatchdog

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.queue import Queue

__all__ = ["SHARED_READS_ABOVE", "Worker", "WorkerSettings"]

SHARED_READS_ABOVE = 4
"""Handlers above which a worker shares reads by default (at most this many blocking
reads, each on a connection of its own, is the cheapest for few queues)."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker process runs (handler-specific options live on the handlers).

    block_ms: longest blocking read (kept well under the socket timeout).
    grace_period: seconds in-flight handlers get to finish at shutdown.
    settle_timeout: seconds an ack/retry/DLQ step may take (shielded) before giving up
        and leaving the message pending for reclaim.
    reclaim_interval: seconds between reclaim scans (default: half the lease, at most 5).
    maintenance_interval: longest sleep of the delayed-message mover.
    expire_interval, trim_interval: seconds between expiry and retention passes.
    retention: seconds of acknowledged history kept in a stream (None: keep all).
    dead_consumer_idle: seconds after which an idle consumer holding nothing is removed.
    burst: handle what is there (including retries), then stop. Leaving an
        ``async with mq.worker(burst=True):`` block waits for that drain, as
        ``run_worker(burst=True)`` does; ``stop()`` ends it early.
    startup_timeout: seconds start-up keeps retrying while Redis is unreachable (a lost
        reply, Redis down or restarting) before it gives up (``worker_start_failed``).
    concurrency: overrides every handler's concurrency (the CLI's ``--concurrency``).
    observers: instrumentation told about every settled message (metrics, tracing); see
        :mod:`leanmq_async.worker.observer`. Empty: no cost.
    loop_block_threshold: seconds the event loop may go without running before the
        ``loop_blocked`` warning names the handler blocking it (None: no watchdog); see
        :mod:`leanmq_async.worker.watchdog`.
    shared_reads: the handlers share one wake-up read and one claim pipeline instead of a
        blocking read each (:mod:`leanmq_async.worker.read_hub`): connections stay few
        however many queues. None (default): shared when the worker runs more than
        ``SHARED_READS_ABOVE`` handlers (partitions count one each), except on Redis
        Cluster, where a multi-key read must stay in one slot (per-handler reads there).
    """

    block_ms: int = 2000
    grace_period: float = 10.0
    settle_timeout: float = 10.0
    reclaim_interval: float | None = None
    maintenance_interval: float = 0.5
    expire_interval: float = 5.0
    trim_interval: float = 60.0
    retention: float | None = 3600.0
    dead_consumer_idle: float = 3600.0
    burst: bool = False
    concurrency: int | None = None
    observers: tuple[Any, ...] = ()
    loop_block_threshold: float | None = 1.0
    startup_timeout: float = 30.0
    shared_reads: bool | None = None

    def __post_init__(self) -> None:
        observers: Any = self.observers  # a list is accepted too: stored as a tuple
        if not isinstance(observers, tuple):
            if isinstance(observers, str | bytes) or not hasattr(observers, "__iter__"):
                raise ConfigurationError("observers must be a list or tuple of observers")
            object.__setattr__(self, "observers", tuple(observers))
        if self.block_ms < 1:
            raise ConfigurationError("block_ms must be >= 1")
        for name in (
            "grace_period",
            "settle_timeout",
            "maintenance_interval",
            "expire_interval",
            "trim_interval",
            "dead_consumer_idle",
            "startup_timeout",
        ):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"worker setting {name} must be >= 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        threshold = self.loop_block_threshold
        if threshold is not None and (
            not isinstance(threshold, int | float) or isinstance(threshold, bool) or threshold <= 0
        ):
            raise ConfigurationError(
                "loop_block_threshold must be a number of seconds > 0, or None (no watchdog)"
            )


class Worker:
    """Runs the handlers registered on a :class:`~leanmq_async.LeanMQ` client."""

    def __init__(
        self,
        mq: LeanMQ,
        *,
        queues: Iterable[Queue] | None = None,
        settings: WorkerSettings | None = None,
        **overrides: Any,
    ) -> None:
        self.mq = mq
        base = settings or WorkerSettings()
        try:
            self.settings = dataclasses.replace(base, **overrides) if overrides else base
        except TypeError as exc:
            names = sorted(f.name for f in dataclasses.fields(WorkerSettings))
            raise ConfigurationError(f"unknown worker setting: {exc}; valid: {names}") from exc
        # The client's observers (LeanMQ(observers=...), mq.add_observer) come first.
        own = [o for o in mq.observers if not any(o is s for s in self.settings.observers)]
        if own:
            self.settings = dataclasses.replace(
                self.settings, observers=(*own, *self.settings.observers)
            )
        wanted = set(queues) if queues is not None else None
        self.handlers = [h for h in mq.handlers if wanted is None or h.queue in wanted]
        if not self.handlers:
            raise ConfigurationError(
                "no handlers to run: decorate coroutine functions with @queue.handler before "
                "starting a worker" + (" (none on the queues given)" if wanted else "")
            )
        consumer = mq.consumer_name
        shared = self.settings.shared_reads
        if shared is None:
            shared = len(self.handlers) > SHARED_READS_ABOVE and not mq.store.cluster
        if shared and mq.store.cluster:
            raise ConfigurationError(
                "shared_reads is not available on Redis Cluster (a read of many streams must "
                "stay in one hash slot): leave shared_reads unset there"
            )
        self.hub = ReadHub(mq.store, self.settings.block_ms) if shared else None
        self.runners = [HandlerRunner(h, self.settings, consumer, self.hub) for h in self.handlers]
        self.maintenance = Maintenance(
            mq.store, self.handlers, self.settings, shared=self.hub is not None
        )
        self.cancel_listener = CancelListener(mq, self.runners)  # one subscription
        for runner in self.runners:
            runner.on_scheduled = self.maintenance.nudge
        from leanmq_async.worker.cron_scheduler import CronScheduler  # issue 16

        self.maintenance.cron = CronScheduler.for_handlers(
            mq, self.handlers, self.maintenance.nudge
        )
        self.log = get_logger("leanmq_async.worker", consumer=consumer)
        self._stop = anyio.Event()
        self._started = False
        self._finished = anyio.Event()
        self.ready = anyio.Event()
        """Set once start-up is done and every handler runs."""
        self._tg: TaskGroup | None = None

    def __repr__(self) -> str:
        state = "stopping" if self._stop.is_set() else ("running" if self._started else "idle")
        return f"<Worker {state} consumer={self.mq.consumer_name!r} handlers={len(self.runners)}>"

    @property
    def stats(self) -> RunnerStats:
        """Counters summed over every handler of this worker."""
        total = RunnerStats()
        for runner in self.runners:
            for f in dataclasses.fields(RunnerStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(runner.stats, f.name))
        return total

    def stop(self, *, force: bool = False) -> None:
        """Begin a graceful shutdown (safe to call more than once, and from any task).

        ``force=True`` skips the grace period: running handlers are cancelled now and
        their messages stay pending for another worker.
        """
        self._stop.set()
        if force:
            for runner in self.runners:
                runner.cancel_processors()

    async def health(self) -> dict[str, Any]:
        """Redis reachability plus this worker's state and counters."""
        report = await self.mq.health()
        report["worker"] = {
            "running": self._started and not self._finished.is_set(),
            "stopping": self._stop.is_set(),
            "in_flight": sum(r.in_flight for r in self.runners),
            "handlers": {
                f"{r.queue.name}/{r.group}": dataclasses.asdict(r.stats) for r in self.runners
            },
        }
        return report

    # -- running -------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` (or cancellation), then shut down gracefully."""
        if self._started:
            raise RuntimeError("a Worker can be served once; create a new one with mq.worker()")
        self._started = True
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._stop_when_cancelled)
            # Shielded: cancellation from outside becomes a graceful stop (above), and the
            # shutdown below still gets its grace period.
            with anyio.CancelScope(shield=True):
                try:
                    await self._run(task_status)
                finally:
                    self._finished.set()
            outer.cancel_scope.cancel()

    async def _stop_when_cancelled(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            self.stop()

    async def _startup(self) -> None:
        mq = self.mq
        await mq.store.check_version()
        # Only the groups the handlers read (below): a default group nobody reads would
        # keep every entry from being trimmed and show as a growing backlog.
        # Flat in the number of queues: one pipeline asks which exist, one batch creates.
        queues = [mq.queue(base) for base in sorted({h.queue.base_name for h in self.handlers})]
        dlqs = [q.dead_letter_queue() for q in queues]
        exist = await mq.store.queues_exist(
            [(q.keys, d.stream) for q, d in zip(queues, dlqs, strict=True)]
        )
        # Only when missing: a Redis at maxmemory (noeviction) refuses even writes that
        # change nothing, and a worker must be able to start there to drain it.
        await mq.store.create_queues(
            mq.prefix,
            [
                (q.keys, q.consumer_group, d.consumer_group)
                for q, d, ok in zip(queues, dlqs, exist, strict=True)
                if not ok
            ],
        )
        wanted = {(h.queue.stream, h.group): h.queue.keys for h in self.handlers}
        infos = await mq.store.stream_infos([(s, keys) for (s, _), keys in wanted.items()])
        missing = [
            pair
            for pair, info in zip(wanted, infos, strict=True)
            if pair[1] not in {text(g["name"]) for g in info["groups"]}
        ]
        if missing:
            await mq.store.ensure_groups([s for s, _ in missing], [g for _, g in missing])
        await mq.store.sync_clock()
        await mq.store.load_scripts()

    async def _start(self) -> None:
        """:meth:`_startup`, retrying while Redis is unreachable, for ``startup_timeout``.

        Every step is idempotent (groups and metadata are created only if missing), so a
        step whose reply was lost is simply run again. Returns early on :meth:`stop`.
        """
        timeout = self.settings.startup_timeout
        deadline = anyio.current_time() + timeout
        attempt, pause = 0, 0.1
        while True:
            attempt += 1
            try:
                await self._startup()
                return
            except LeanMQConnectionError as exc:
                left = deadline - anyio.current_time()
                if left <= 0:
                    self.log.error(
                        "worker_start_failed",
                        error=str(exc),
                        attempts=attempt,
                        reason=f"Redis stayed unreachable for startup_timeout={timeout:g}s",
                    )
                    raise
                wait = min(pause, left)
                self.log.warning(
                    "worker_start_retry", attempt=attempt, error=str(exc), retry_in=round(wait, 3)
                )
                with anyio.move_on_after(wait):
                    await self._stop.wait()
                if self._stop.is_set():
                    return
                pause = min(2.0, pause * 2)
            except LeanMQError as exc:
                self.log.error("worker_start_failed", error=str(exc), attempts=attempt)
                raise

    async def _run(self, task_status: TaskStatus[Worker]) -> None:
        await self._start()
        if self._stop.is_set():
            task_status.started(self)
            return
        async with anyio.create_task_group() as tg:
            maintenance = anyio.CancelScope()

            async def run_maintenance() -> None:
                with maintenance:
                    await self.maintenance.run()

            tg.start_soon(run_maintenance)
            listening = anyio.CancelScope()

            async def run_cancel_listener(*, task_status: TaskStatus[None]) -> None:
                with listening:
                    await self.cancel_listener.run(task_status=task_status)

            await tg.start(run_cancel_listener)
            watchdog = anyio.CancelScope()
            threshold = self.settings.loop_block_threshold
            if threshold is not None:
                dog = LoopWatchdog(self.runners, threshold)

                async def run_watchdog(*, task_status: TaskStatus[None]) -> None:
                    with watchdog:
                        await dog.run(task_status=task_status)

                await tg.start(run_watchdog)
            hub = anyio.CancelScope()
            if self.hub is not None:

                async def run_hub(hub_reads: ReadHub) -> None:
                    with hub:
                        await hub_reads.run()

                tg.start_soon(run_hub, self.hub)
            burst_watch = anyio.CancelScope()
            # The runners in a group of their own: the hub serves their last acks.
            async with anyio.create_task_group() as runners:
                for runner in self.runners:
                    await runners.start(runner.run)
                self.log.info(
                    "worker_started",
                    queues=sorted({r.queue.name for r in self.runners}),
                    handlers=len(self.runners),
                    shared_reads=self.hub is not None,
                )
                task_status.started(self)
                self.ready.set()
                # LeanMQ 0.2 (issue 15): say once at start if its queues wait under the prefix.
                from leanmq_async.legacy import log_legacy_queues

                await log_legacy_queues(self.mq, self.log)
                if self.settings.burst:
                    tg.start_soon(self._stop_when_burst_done, burst_watch)
                await self._stop.wait()
                await self._shutdown()
            hub.cancel()
            maintenance.cancel()
            listening.cancel()
            burst_watch.cancel()
            watchdog.cancel()

    async def _stop_when_burst_done(self, scope: anyio.CancelScope) -> None:
        # In `scope`, cancelled once shut down: a burst worker stopped (stop(), or an
        # error leaving its `async with` block) before its drain is done must not wait.
        with scope:
            for runner in self.runners:
                await runner.burst_done.wait()
            self.stop()

    async def _shutdown(self) -> None:
        in_flight = sum(r.in_flight for r in self.runners)
        self.log.info("shutdown", phase="stop_fetching", in_flight=in_flight)
        for runner in self.runners:
            runner.stop_fetching()
        if self.hub is not None:
            self.hub.stop_reading()
        with anyio.move_on_after(self.settings.grace_period):
            for runner in self.runners:
                await runner.drained.wait()
        left = sum(r.in_flight for r in self.runners)
        if left:
            self.log.warning("shutdown", phase="cancel_handlers", left_pending=left)
        for runner in self.runners:
            runner.cancel_processors()
        for runner in self.runners:
            await runner.drained.wait()
        self.log.info("shutdown", phase="done", **dataclasses.asdict(self.stats))

    # -- embedding -----------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self.serve)
        except BaseException as exc:
            await self._tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        # A burst worker's block ends in its drain (as run_worker(burst=True) does): it
        # stops itself once everything queued is handled. An error in the block stops it.
        if not self.settings.burst or exc_type is not None:
            self.stop()
        assert self._tg is not None
        return await self._tg.__aexit__(exc_type, exc, tb)
