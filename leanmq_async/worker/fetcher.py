"""Feeding the work queue: reads of new messages, and reclaims of abandoned ones.

The first part of a runner's pipeline (see :mod:`leanmq_async.worker.runner`). Two loops
put :class:`~leanmq_async.worker.state.Work` items into the shared work queue, each only
after reserving free slots (:class:`~leanmq_async.worker.state.Slots`), so a worker never
holds more messages than it can run:

* the fetch loop reads with XREADGROUP as many new messages as there are free slots; the
  acks buffered so far ride with the read. In burst mode, an empty read asks whether
  anything is left at all (:meth:`Fetcher.nothing_left`) and ends the drain;
* the reclaim loop scans the pending list every interval for entries idle past the lease
  (their consumer died) and claims them; a scan goes on while more remain.

A failed read goes to :class:`~leanmq_async.worker.recovery.Recovery`, which repairs or
pauses. :meth:`Fetcher.stop` abandons a blocking read under way.

In a worker with many handlers (``hub`` given), the runners share reads instead of
blocking a connection each (:mod:`leanmq_async.worker.read_hub`): the fetch loop waits
for news from the hub's waker, then claims through the hub's rounds; reclaim scans go
in those rounds too.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from leanmq_async.exceptions import LeanMQError
from leanmq_async.keys import DEFAULT_LEVEL
from leanmq_async.priority import LEVEL_CHECK, by_level, claim_order, level_bid

if TYPE_CHECKING:
    from leanmq_async.queue import Queue
    from leanmq_async.store import RawEntry
    from leanmq_async.worker.observer import Notifier
    from leanmq_async.worker.read_hub import ReadHub
    from leanmq_async.worker.recovery import Recovery
    from leanmq_async.worker.settler import Settler
    from leanmq_async.worker.state import RunnerState

__all__ = ["Fetcher"]


class Fetcher:
    """The fetch and reclaim loops of one runner; see the module docstring."""

    def __init__(
        self,
        queue: Queue[Any],
        group: str,
        consumer: str,
        *,
        lease_ms: int,
        block_ms: int,
        burst: bool,
        reclaim_interval: float | None,
        state: RunnerState,
        settler: Settler,
        recovery: Recovery,
        notifier: Notifier,
        hub: ReadHub | None = None,
    ) -> None:
        self.queue = queue
        self.store = queue.mq.store
        self.stream = queue.stream
        self.group = group
        self.consumer = consumer
        self.lease_ms = lease_ms
        self.burst = burst
        # In burst mode a short block: an empty read is how the drain's end is noticed.
        self.block_ms = min(block_ms, 100) if burst else block_ms
        self.reclaim_interval = reclaim_interval or min(5.0, lease_ms / 2000)
        self.state = state
        self.read_batch = max(1, min(state.slots.concurrency // 4, 250))
        self.settler = settler
        self.recovery = recovery
        self.notifier = notifier
        self.log = state.log
        self._read_scope: anyio.CancelScope | None = None
        self.reclaim_scans = 0  # reclaim intervals begun (tests count them)
        self.burst_done = anyio.Event()
        # Priorities (priority.py): are the queue's level streams read, since when checked,
        # claims made (the starvation guard counts them), where a wait on the levels starts.
        self.levels = False
        self._levels_checked = -LEVEL_CHECK
        self.claims = 0
        self._last: tuple[list[str], list[str]] = ([], [])
        self.hub = hub
        self.member = None
        if hub is not None:
            self.member = hub.join(
                self.stream, group, consumer, lease_ms, self.reclaim_interval, queue.keys
            )

    def stop(self) -> None:
        """Abandon a blocking read under way (its connection is closed)."""
        if self._read_scope is not None:
            self._read_scope.cancel()
        if self.hub is not None and self.member is not None:
            self.member.stop()
            self.hub.withdraw(self.member)

    async def fetch_loop(self) -> None:
        """Read new messages into free slots until shutdown (or a burst's drain)."""
        if self.hub is not None:
            await self.shared_fetch_loop()
            if not self.hub_levels() or self.state.stopping.is_set():
                return
            # Its queue uses priority levels: read them here (claim.lua), off the hub.
            self.levels = True
            self.log.info("priorities_in_use", queue=self.queue.name, shared_reads=False)
        slots, settler, recovery = self.state.slots, self.settler, self.recovery
        failures = 0
        while True:
            n = await slots.reserve(batch=self.read_batch)
            if n == 0:
                return
            entries: list[RawEntry] = []
            # Acks buffered so far ride with the read: no XACK round trip of their own.
            acks = settler.take_acks()
            read = False
            try:
                # Cancelled by stop(): no read outlives the decision to stop.
                with anyio.CancelScope() as self._read_scope:
                    entries = await self.read(n, acks)
                    read = True
            except LeanMQError as exc:
                slots.release(n)
                failures += 1
                await recovery.on_redis_error(exc, failures)
                continue
            finally:
                scope, self._read_scope = self._read_scope, None
                settler.return_acks(acks, sent=read)
            if scope is not None and scope.cancel_called and not entries:
                slots.release(n)
                return
            if failures or recovery.redis_down:
                failures = 0
                recovery.on_redis_back()
            if await self._take(entries, n):
                return

    async def read(self, n: int, acks: list[bytes]) -> list[RawEntry]:
        """Read up to ``n`` new entries, blocking up to ``block_ms`` when there are none.

        A queue whose priority levels are in use (a stream of a level other than the
        default exists; checked every :data:`LEVEL_CHECK` s until one does) is read with
        :meth:`claim_levels`; any other with one XREADGROUP, as always.
        """
        if not self.levels and time.monotonic() >= self._levels_checked + LEVEL_CHECK:
            self._levels_checked = time.monotonic()
            self.levels = await self.store.levels_in_use(self.queue.keys)
            if self.levels:
                self.log.info("priorities_in_use", queue=self.queue.name)
        if not self.levels:
            return await self.store.read_group(
                self.stream, self.group, self.consumer, n, self.block_ms, acks=acks
            )
        entries = await self.claim_levels(n, acks)
        if not entries and await self.store.wait_levels(*self._last, self.block_ms):
            entries = await self.claim_levels(n, [])
        return entries

    async def claim_levels(self, n: int, acks: list[bytes]) -> list[RawEntry]:
        """Claim up to ``n`` new entries of the queue for the group, highest priority
        first, without blocking (the starvation guard: :func:`~leanmq_async.priority.
        claim_order`). Entries of a level stream are named with their level."""
        keys = self.queue.keys
        order = claim_order(keys, self.claims)
        self.claims += 1
        ack_groups = list(by_level(keys, self.stream, acks).items())
        found, last = await self.store.claim_new(order, self.group, self.consumer, n, ack_groups)
        self._last = ([k.stream for k in order], last)
        return [(level_bid(sid, level), f) for level, got in found for sid, f in got]

    def level_streams(self) -> list[tuple[int, str]]:
        """``(level, stream)`` of each level this runner reads (the default only, until
        priorities are in use)."""
        if not self.levels and not self.hub_levels():
            return [(DEFAULT_LEVEL, self.stream)]
        keys = self.queue.keys
        return [
            (k.level, self.stream if k.level == DEFAULT_LEVEL else k.stream) for k in keys.levels()
        ]

    async def shared_fetch_loop(self) -> None:
        """The fetch loop of a runner sharing reads: wait for news, claim through the hub.

        A claim that fills every slot reserved means a backlog: the next one goes as soon
        as slots are free, without waiting for news.
        """
        hub, member = self.hub, self.member
        assert hub is not None and member is not None
        state, slots, settler, recovery = self.state, self.state.slots, self.settler, self.recovery
        wait = self.block_ms / 1000 if self.burst else None
        failures = 0
        await hub.levels_scanned.wait()
        while True:
            if member.levels:
                return  # the caller reads the levels itself
            if not member.dirty:
                await member.wait(wait)
                if state.stopping.is_set() or member.levels:
                    return
                if not member.dirty:  # burst mode: nothing came within the short block
                    if await self.nothing_left():
                        self.burst_done.set()
                        return
                    continue
            n = await slots.reserve(batch=self.read_batch)
            if n == 0:
                return
            member.dirty = False
            acks = settler.take_acks()
            entries: list[RawEntry] | None = None
            try:
                plain = acks
                if any(a.endswith((b":p0", b":p2")) for a in acks):
                    # Acks of level entries (recovered at start): XACKs of their own.
                    levels = by_level(self.queue.keys, self.stream, acks)
                    plain = levels.pop(self.stream, [])
                    for stream, ids in levels.items():
                        await hub.ack(stream, self.group, ids)
                entries = await hub.claim_new(member, n, plain)
            except LeanMQError as exc:
                slots.release(n)
                failures += 1
                member.dirty = True
                await recovery.on_redis_error(exc, failures)
                continue
            finally:
                settler.return_acks(acks, sent=entries is not None)
            if entries is None:  # stopped before the round took the claim
                slots.release(n)
                return
            if failures or recovery.redis_down:
                failures = 0
                recovery.on_redis_back()
            if await self._take(entries, n):
                return

    async def _take(self, entries: list[RawEntry], reserved: int) -> bool:
        """Dispatch what a read brought into the ``reserved`` slots (the rest are freed);
        True when a burst's drain is over (nothing left anywhere)."""
        state = self.state
        state.slots.release(reserved - len(entries))
        state.stats.received += len(entries)
        if entries:
            state.dispatch(entries, 1)
            # Let the processors start on these before the next read is sent: it saves
            # the handlers the time it takes to issue that read.
            await anyio.lowlevel.checkpoint()
        elif self.burst and await self.nothing_left():
            self.burst_done.set()
            return True
        return False

    def hub_levels(self) -> bool:
        """Sharing reads, has the hub found this runner's queue using priority levels?"""
        return self.member is not None and self.member.levels

    async def levels_known(self) -> bool:
        """Does the queue use priority levels (sharing reads: as the hub's scan found)?"""
        if self.hub is None:
            return await self.store.levels_in_use(self.queue.keys)
        await self.hub.levels_scanned.wait()
        return self.hub_levels()

    async def nothing_left(self) -> bool:
        """In burst mode: is there nothing left in flight, pending, scheduled or unread?

        Unread too: a retry the mover put into the stream just after a read came back
        empty is neither pending nor delayed any more, but still to be handled.
        """
        if self.state.slots.free != self.state.slots.concurrency or self.settler.acks_buffered:
            return False
        keys = self.queue.keys
        for level in keys.levels() if self.levels else (keys,):
            stream = self.stream if level.level == DEFAULT_LEVEL else level.stream
            (info,) = await self.store.stream_infos([(stream, level)])
            mine = [g for g in info["groups"] if g["name"].decode() == self.group]
            if stream == self.stream and not mine:
                return False
            if not mine:
                # A level stream not read by this group yet: anything in it is unread.
                if info["length"] or info["delayed"]:
                    return False
                continue
            if int(mine[0]["pending"]) or info["delayed"]:
                return False
            last = mine[0]["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else str(last)
            if await self.store.range(stream, f"({last}", "+", 1):
                return False
        return True

    async def reclaim_loop(self) -> None:
        """Every interval, scan the pending list for entries idle past the lease.

        A scan goes on while there is more (bounded batches, as free slots allow), so a
        large idle backlog (say after Redis refused writes for a while) is taken back in
        one scan, not ``concurrency`` entries per interval.
        """
        state, slots = self.state, self.state.slots
        start, level_i = "-", 0
        while True:
            if start == "-" and level_i == 0:
                if self.member is not None and not self.member.levels:
                    await self.member.wait_reclaim()  # the hub's scan found idle entries
                else:
                    await state.pause(self.reclaim_interval)
                self.reclaim_scans += 1
            if state.stopping.is_set():
                return
            n = await slots.reserve_batch(reclaiming=True)
            if n == 0:
                return
            # Each level stream in use is scanned in turn (priority.py).
            levels = self.level_streams()
            level, stream = levels[min(level_i, len(levels) - 1)]
            try:
                reclaim = self.store.reclaim if self.hub is None else self.hub.reclaim
                found = await reclaim(stream, self.group, self.consumer, self.lease_ms, n, start)
            except LeanMQError as exc:
                slots.release(n)
                if level != DEFAULT_LEVEL and "NOGROUP" in str(exc):
                    # The group has not read this level yet: nothing of it is pending.
                    start, level_i = "-", (level_i + 1) % len(levels)
                    continue
                self.log.warning("reclaim_failed", error=str(exc))
                start, level_i = "-", 0
                continue
            start = found.next_start or "-"
            if start == "-":
                level_i = (level_i + 1) % len(levels)
            if level != DEFAULT_LEVEL:
                found = found.at_level(level)
            # An entry this worker is still handling (its lease ran out while Redis was
            # slow to answer the extension) is now ours again: do not run it twice.
            # One it handled whose ack could not be written yet (Redis was away longer than
            # settle_timeout) is done: send that ack rather than run it again.
            unacked = self.settler.unacked()
            in_flight = state.in_flight
            claimed = [e for e in found.entries if e[0] not in in_flight and e[0] not in unacked]
            if unacked and len(claimed) < len(found.entries):
                self.settler.wake()
            slots.release(n - len(claimed))
            state.report_missing(found.missing)
            if claimed:
                state.stats.reclaimed += len(claimed)
                self.log.info("reclaimed", count=len(claimed))
                if self.notifier.observers:
                    self.notifier.notify("on_reclaimed", len(claimed))
            state.dispatch(claimed, found.deliveries)
