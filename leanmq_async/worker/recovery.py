"""Coming back: a runner's own pending messages at start, and Redis outages.

* At start, :meth:`Recovery.recover_own_pending` hands the processors what this consumer
  name still holds from a previous run (a restart under the same name), at once rather
  than a lease later.
* When a read fails, :meth:`Recovery.on_redis_error` decides what to do: a missing group
  or stream (deleted, or the whole database flushed) is created again, whole; Redis
  unreachable is logged once (``redis_unavailable``) and the fetch loop pauses with a
  growing backoff (cut short by shutdown); :meth:`Recovery.on_redis_back` logs
  ``redis_reconnected`` after the first read that works again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from leanmq_async.exceptions import LeanMQConnectionError, LeanMQError, RedisOperationError
from leanmq_async.keys import DEFAULT_LEVEL

if TYPE_CHECKING:
    from leanmq_async.queue import Queue
    from leanmq_async.worker.state import RunnerState

__all__ = ["Recovery"]


class Recovery:
    """Recovery of one runner; see the module docstring."""

    def __init__(self, queue: Queue[Any], group: str, consumer: str, state: RunnerState) -> None:
        self.queue = queue
        self.store = queue.mq.store
        self.stream = queue.stream
        self.group = group
        self.consumer = consumer
        self.state = state
        self.log = state.log
        self.redis_down = False
        # How a reclaim step is sent (a worker sharing reads sends it in a hub round).
        self.reclaim = self.store.reclaim
        # Whether the queue uses priority levels (a worker sharing reads asks its hub).
        self.levels_in_use: Callable[[], Awaitable[bool]] = lambda: self.store.levels_in_use(
            queue.keys
        )

    async def recover_own_pending(self) -> None:
        """At start, handle what this consumer name still holds from a previous run."""
        levels = [(DEFAULT_LEVEL, self.stream)]
        if await self._levels_in_use():
            keys = self.queue.keys
            levels += [(k.level, k.stream) for k in keys.levels() if k.level != DEFAULT_LEVEL]
        for level, stream in levels:
            await self._recover_stream(level, stream)

    async def _levels_in_use(self) -> bool:
        try:
            return await self.levels_in_use()
        except LeanMQError:
            return False

    async def _recover_stream(self, level: int, stream: str) -> None:
        state = self.state
        start = "-"
        while not state.stopping.is_set():
            n = await state.slots.reserve_batch()
            if n == 0:
                return
            try:
                found = await self.reclaim(
                    stream, self.group, self.consumer, 0, n, start, owner=self.consumer
                )
            except LeanMQError as exc:
                state.slots.release(n)
                if level == DEFAULT_LEVEL or "NOGROUP" not in str(exc):
                    self.log.warning("recover_pending_failed", error=str(exc))
                return
            if level != DEFAULT_LEVEL:
                found = found.at_level(level)
            state.slots.release(n - len(found.entries))
            state.report_missing(found.missing)
            state.dispatch(found.entries, found.deliveries)
            if found.entries:
                self.log.info("recovered_pending", count=len(found.entries))
            if not found.next_start:
                return
            start = found.next_start

    async def on_redis_error(self, exc: LeanMQError, failures: int) -> None:
        """A read failed (the ``failures``-th in a row): repair what can be, then pause."""
        # NOGROUP: the group (or stream) is missing. UNBLOCKED: the stream was deleted
        # while this worker's read waited on it.
        missing = "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc)
        if isinstance(exc, RedisOperationError) and missing:
            try:
                created = await self.recreate_queue()
            except LeanMQError:
                created = 0
            if created:
                self.log.warning("group_created", reason="consumer group was missing")
                return
        if isinstance(exc, LeanMQConnectionError) and not self.redis_down:
            self.redis_down = True
            self.log.warning("redis_unavailable", error=str(exc))
        elif not isinstance(exc, LeanMQConnectionError):
            self.log.error("fetch_failed", error=str(exc))
        await self.state.pause(min(5.0, 0.05 * 2 ** min(failures, 7)))

    async def recreate_queue(self) -> int:
        """The stream (or the whole database) is gone: create the queue again, whole.

        The group this handler reads (the return value: 1 if it was created), and what the
        worker creates at start: the DLQ and its group, the metadata and the registry
        entry, without which the DLQ could not be opened or listed (not the default group
        when this handler reads another one).
        """
        queue = self.queue
        created = await self.store.ensure_groups([self.stream], [self.group])
        await self.store.create_queue(
            queue.mq.prefix,
            queue.keys,
            queue.consumer_group,
            queue.dead_letter_queue().consumer_group,
            create_group=False,
        )
        return created

    def on_redis_back(self) -> None:
        """A read worked again: log the reconnection once after an outage."""
        if self.redis_down:
            self.redis_down = False
            self.log.info("redis_reconnected")
