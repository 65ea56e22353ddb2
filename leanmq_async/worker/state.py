"""What the parts of one handler's runner share: slots, the work queue, counters.

A :class:`~leanmq_async.worker.runner.HandlerRunner` is a pipeline of small parts (see
its module docstring). They share one :class:`RunnerState`, passed in, instead of
reaching into each other:

* :class:`Slots`: ``concurrency`` slots; a message is only read or claimed into a free
  one, so a worker never holds more than it can run;
* the work queue of :class:`Work` items (read or claimed, not started yet) and the set of
  stream ids in flight (queued or running: the lease keeper extends their leases);
* :class:`RunnerStats`, the stop event and the runner's logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from leanmq_async._log import get_logger
from leanmq_async.worker.dispatch import WorkQueue

__all__ = ["RunnerState", "RunnerStats", "Slots", "Work"]

# How long a busy worker waits to gather a batch of free slots before a read (and the
# acker for finished messages before an XACK): a few ms of delay buys batched round trips.
LINGER = 0.002
# Most entries one reclaim step claims (a worker with large concurrency reclaims a big
# backlog in several steps of one scan).
RECLAIM_BATCH = 1000


@dataclass(slots=True)
class RunnerStats:
    """Counters of one handler in one worker process."""

    received: int = 0
    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    expired: int = 0
    reclaimed: int = 0
    lost: int = 0
    rate_limited: int = 0  # deferred by the handler's rate limit (issue 16)
    rate_limit_late: int = 0  # grants found too late to use: asked again (issue 16)


class Work:
    """One entry read or claimed, waiting for (or in) a processor."""

    __slots__ = ("deliveries", "fetched", "fields", "sid")

    def __init__(
        self, sid: bytes, fields: dict[bytes, bytes] | None, deliveries: int, fetched: float
    ) -> None:
        self.sid = sid
        self.fields = fields
        self.deliveries = deliveries
        self.fetched = fetched  # time.monotonic() when read or claimed


class Slots:
    """The runner's free processor slots, reserved before a read or a claim."""

    __slots__ = ("_freed", "_reclaim_waiting", "_stop", "concurrency", "free")

    def __init__(self, concurrency: int, stop: anyio.Event) -> None:
        self.concurrency = concurrency
        self.free = concurrency
        self._freed = anyio.Event()
        self._reclaim_waiting = False
        self._stop = stop

    async def _freed_wait(self) -> None:
        # Every waiter waits on the same event (only replaced once set), so a release
        # wakes them all.
        if self._freed.is_set():
            self._freed = anyio.Event()
        await self._freed.wait()

    async def reserve(self, *, reclaiming: bool = False, batch: int = 1) -> int:
        """Wait for free slots and reserve all of them; 0 when shutting down.

        With ``batch`` > 1, once a slot is free wait up to ``LINGER`` more for ``batch``
        of them: a busy worker then reads in batches instead of one message per round
        trip, and an idle one (all slots free) reads at once.

        The reclaim loop (``reclaiming``) goes first: the fetch loop gives its slots back
        after each read and would otherwise take them again at once, starving reclaims.
        """
        stop = self._stop
        while True:
            if reclaiming:
                self._reclaim_waiting = True
            try:
                while not stop.is_set() and (
                    self.free == 0 or (self._reclaim_waiting and not reclaiming)
                ):
                    await self._freed_wait()
            finally:
                if reclaiming:
                    self._reclaim_waiting = False
            if self.free < batch and not stop.is_set():
                with anyio.move_on_after(LINGER):
                    while self.free < batch and not stop.is_set():
                        await self._freed_wait()
            if stop.is_set():
                return 0
            # Another loop (the reclaim loop goes first) may have taken every free slot
            # while this one lingered: wait again, never return 0 unless stopping (0 ends
            # the caller's loop for good).
            if self.free:
                n, self.free = self.free, 0
                return n

    async def reserve_batch(self, *, reclaiming: bool = False) -> int:
        """Reserve free slots for one reclaim step: at most ``RECLAIM_BATCH``."""
        n = await self.reserve(reclaiming=reclaiming)
        self.release(max(0, n - RECLAIM_BATCH))
        return min(n, RECLAIM_BATCH)

    def release(self, n: int) -> None:
        """Give ``n`` slots back (a message finished, or fewer entries came than asked)."""
        if n:
            self.free += n
            self._freed.set()

    def wake(self) -> None:
        """Wake every waiter (shutdown began: they return 0)."""
        self._freed.set()


class RunnerState:
    """The state the parts of one runner share; see the module docstring."""

    def __init__(self, concurrency: int, queue_name: str, group: str) -> None:
        self.stopping = anyio.Event()
        self.slots = Slots(concurrency, self.stopping)
        self.work: WorkQueue[Work] = WorkQueue()
        self.in_flight: set[bytes] = set()
        self.stats = RunnerStats()
        self.log = get_logger("leanmq_async.worker", queue=queue_name, group=group)
        self.debug = logging.getLogger("leanmq_async.worker").isEnabledFor(logging.DEBUG)

    def stop(self) -> None:
        """Read and claim nothing more: waiting reservations return 0, pauses end."""
        self.stopping.set()
        self.slots.wake()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when shutdown begins."""
        with anyio.move_on_after(seconds):
            await self.stopping.wait()

    def dispatch(
        self, entries: Iterable[tuple[bytes, Any]], deliveries: Mapping[bytes, int] | int
    ) -> None:
        """Hand read or claimed entries to the processors (their slots are reserved)."""
        now = time.monotonic()
        works = [
            Work(
                sid,
                fields,
                deliveries if isinstance(deliveries, int) else deliveries.get(sid, 2),
                now,
            )
            for sid, fields in entries
        ]
        self.in_flight.update(w.sid for w in works)
        self.work.put_many(works)

    def report_missing(self, missing: list[bytes]) -> None:
        """Count and log claimed ids whose entries were gone (the claim acked them)."""
        if missing:
            self.stats.lost += len(missing)
            self.log.error(
                "entries_missing",
                count=len(missing),
                ids=[m.decode() for m in missing[:20]],
                detail="deleted or trimmed from the stream while pending; acked, not handled",
            )
