"""Running one handler: a pipeline of small parts, composed here.

Follow one message from read to ack by opening the parts in this order:

1. :mod:`~leanmq_async.worker.fetcher`: the fetch loop reads new messages into free
   slots, the reclaim loop claims messages abandoned by dead consumers; both put them into
   the shared work queue;
2. :mod:`~leanmq_async.worker.executor`: ``concurrency`` processor tasks take them, triage
   them, call the handler and map its outcome;
3. :mod:`~leanmq_async.worker.settler`: ack (batched), retry with backoff, dead-letter or
   expire;
4. :mod:`~leanmq_async.worker.leases`: the lease keeper extends the leases of every
   message in flight;
5. :mod:`~leanmq_async.worker.recovery`: this consumer's own pending messages at start,
   and Redis outages (pause, reconnect, a deleted group or stream created again).

The parts share one :class:`~leanmq_async.worker.state.RunnerState` (slots, the work
queue, the messages in flight, counters). A :class:`HandlerRunner` runs them in one task
group and shuts them down in two phases: :meth:`~HandlerRunner.stop_fetching`, then
:meth:`~HandlerRunner.cancel_processors`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from leanmq_async.worker.executor import Executor
from leanmq_async.worker.fetcher import Fetcher
from leanmq_async.worker.leases import LeaseKeeper
from leanmq_async.worker.observer import Notifier
from leanmq_async.worker.recovery import Recovery
from leanmq_async.worker.settler import Settler
from leanmq_async.worker.state import RunnerState, RunnerStats

if TYPE_CHECKING:
    from leanmq_async.worker.handler import Handler
    from leanmq_async.worker.read_hub import ReadHub
    from leanmq_async.worker.supervisor import WorkerSettings

__all__ = ["HandlerRunner", "RunnerStats"]


class HandlerRunner:
    """Runs one handler of one worker process."""

    def __init__(
        self,
        handler: Handler,
        settings: WorkerSettings,
        consumer: str,
        hub: ReadHub | None = None,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.consumer = consumer
        queue = handler.queue
        self.queue = queue
        self.store = queue.mq.store
        self.stream = queue.stream
        self.group = handler.group
        self.concurrency = settings.concurrency or handler.options.concurrency
        self.lease_ms = int(handler.options.visibility_timeout * 1000)
        self.max_size = queue.mq.codec.max_message_size
        self.state = state = RunnerState(self.concurrency, queue.name, self.group)
        self.stats: RunnerStats = state.stats
        self.log = state.log
        # Instrumentation (worker/observer.py): hooks get this runner first.
        notifier = Notifier(settings.observers, self, state.log)
        self.settler = Settler(handler, consumer, settings.settle_timeout, state, notifier)
        self.leases = LeaseKeeper(
            self.store, queue.keys, self.stream, self.group, consumer, self.lease_ms, state
        )
        self.recovery = Recovery(queue, self.group, consumer, state)
        self.executor = Executor(handler, state, self.settler, self.leases, notifier)
        self.fetcher = Fetcher(
            queue,
            self.group,
            consumer,
            lease_ms=self.lease_ms,
            block_ms=settings.block_ms,
            burst=settings.burst,
            reclaim_interval=settings.reclaim_interval,
            state=state,
            settler=self.settler,
            recovery=self.recovery,
            notifier=notifier,
            hub=hub,
        )
        if hub is not None:
            self.settler.share(hub)
            self.recovery.reclaim = hub.reclaim
            self.recovery.levels_in_use = self.fetcher.levels_known
            self.leases.extend = hub.extend_leases
        self._processors: anyio.CancelScope | None = None
        self.drained = anyio.Event()

    def __repr__(self) -> str:
        return (
            f"<HandlerRunner {self.handler.name} queue={self.queue.name!r} group={self.group!r} "
            f"in_flight={len(self.state.in_flight)}/{self.concurrency}>"
        )

    @property
    def in_flight(self) -> int:
        """Messages read or claimed and not settled yet."""
        return len(self.state.in_flight)

    @property
    def reclaim_scans(self) -> int:
        """Reclaim intervals begun (tests count them)."""
        return self.fetcher.reclaim_scans

    @property
    def burst_done(self) -> anyio.Event:
        """Set in burst mode once nothing is left to handle."""
        return self.fetcher.burst_done

    @property
    def on_scheduled(self) -> Callable[[str], None]:
        """Called with the stream after a retry is scheduled (wakes the delayed mover)."""
        return self.settler.on_scheduled

    @on_scheduled.setter
    def on_scheduled(self, callback: Callable[[str], None]) -> None:
        self.settler.on_scheduled = callback

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop_fetching` and the drain (or :meth:`cancel_processors`)."""
        async with anyio.create_task_group() as services:
            services.start_soon(self.settler.run_acker)
            services.start_soon(self.leases.run)
            async with anyio.create_task_group() as processors:
                self._processors = processors.cancel_scope
                for _ in range(self.concurrency):
                    processors.start_soon(self.executor.run)
                try:
                    task_status.started()
                    await self.recovery.recover_own_pending()
                    async with anyio.create_task_group() as feeders:
                        feeders.start_soon(self.fetcher.fetch_loop)
                        feeders.start_soon(self.fetcher.reclaim_loop)
                finally:
                    self.state.work.close()
            self.drained.set()
            await self.settler.flush_acks()
            services.cancel_scope.cancel()

    def stop_fetching(self) -> None:
        """Phase one of shutdown: read nothing more; held messages are still handled.

        A blocking read under way is abandoned (its connection is closed), so nothing that
        arrives after this call is read. Should Redis have answered it at that very moment,
        those entries stay pending for this consumer and are reclaimed after the lease.
        """
        self.state.stop()
        self.fetcher.stop()

    def cancel_processors(self) -> None:
        """Phase two: cancel handlers still running; their messages stay pending."""
        self.stop_fetching()
        if self._processors is not None:
            self._processors.cancel()
