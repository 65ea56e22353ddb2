"""Background upkeep of the queues a worker serves.

* the mover puts due delayed messages (``delay=`` sends and retries) into their streams;
* expired messages are removed (or dead-lettered) by their expiry index, in bounded
  batches; one pending in a group is left to that group's consumer and re-checked later;
* acknowledged history older than ``retention`` is trimmed, never an unacked entry;
* consumers idle for long with nothing pending are removed;
* the offset to the Redis clock is re-measured;
* periodic jobs' runs are enqueued (:mod:`leanmq_async.worker.cron_scheduler`).

Every step is one script per queue and tolerates Redis being away for a while. A worker
serving many queues (``shared``) keeps that flat in their number: one mover for all of
them asks which delayed sets have something due (``lua/due_scan.lua``, one call for all)
and moves only those (one pipeline); the expiry pass asks the same of the expiry indexes
and runs its script only where something expired.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from leanmq_async._log import get_logger
from leanmq_async.exceptions import LeanMQError, RedisOperationError
from leanmq_async.keys import LEVELS
from leanmq_async.priority import LEVEL_CHECK

if TYPE_CHECKING:
    from leanmq_async.keys import QueueKeys
    from leanmq_async.queue import Queue
    from leanmq_async.registration import Handler
    from leanmq_async.store import MemoryUsage, Store
    from leanmq_async.worker.cron_scheduler import CronScheduler
    from leanmq_async.worker.supervisor import WorkerSettings

__all__ = ["Maintenance"]

_MOVE_BATCH = 500
# The expiry pass works in batches of _EXPIRE_BATCH index entries per script call, and
# at most _EXPIRE_BATCHES calls per queue per pass, so one queue cannot starve the others.
_EXPIRE_BATCH = 1000
_EXPIRE_BATCHES = 50


class Maintenance:
    """The upkeep tasks for the queues of a set of handlers."""

    def __init__(
        self,
        store: Store,
        handlers: list[Handler],
        settings: WorkerSettings,
        *,
        shared: bool = False,
    ) -> None:
        self.store = store
        self.shared = shared
        self.settings = settings
        self.queues: dict[str, Queue] = {}
        self.expired_policy: dict[str, str] = {}
        self.groups: dict[str, set[str]] = {}
        # Per stream, each handler group's own expired policy (others: expired_policy).
        self.group_policies: dict[str, dict[str, str]] = {}
        self.lease_ms: dict[str, int] = {}
        for h in handlers:
            q = h.queue
            self.queues[q.stream] = q
            if h.options.expired == "dlq":
                self.expired_policy[q.stream] = "dlq"
            self.expired_policy.setdefault(q.stream, "drop")
            self.groups.setdefault(q.stream, set()).add(h.group)
            self.group_policies.setdefault(q.stream, {})[h.group] = h.options.expired
            self.lease_ms[q.stream] = max(
                self.lease_ms.get(q.stream, 0), int(h.options.visibility_timeout * 1000)
            )
        self.log = get_logger("leanmq_async.worker")
        self.moved = 0
        self._wake: dict[str, anyio.Event] = {}
        self.expired = 0
        self.trimmed = 0
        self._memory_warned = False
        self.cron: CronScheduler | None = None  # periodic jobs (issue 16), set by the worker
        # Per stream: priority levels in use, and when that was last checked.
        self._levels: dict[str, tuple[bool, float]] = {}

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.shared:
                tg.start_soon(self._shared_mover)
            else:
                for queue in self.queues.values():
                    tg.start_soon(self._mover, queue)
            tg.start_soon(self._every, self.settings.expire_interval, self.expire_once)
            if self.settings.retention is not None:
                tg.start_soon(self._every, self.settings.trim_interval, self.trim_once)
                # Checked more often than the retention pass: memory pressure is urgent.
                interval = min(self.settings.trim_interval, self.settings.expire_interval)
                tg.start_soon(self._every, interval, self.relieve_memory_once)
            tg.start_soon(self._every, 60.0, self.housekeeping_once)
            if self.cron is not None:
                tg.start_soon(self.cron.run)

    async def levels(self, queue: Queue) -> list[QueueKeys]:
        """The keys of each priority level of ``queue`` in use (the default level alone
        until another level's stream or delayed set exists; then all, for good). Checked
        at most every ``LEVEL_CHECK`` seconds."""
        in_use, checked = self._levels.get(queue.stream, (False, -LEVEL_CHECK))
        if not in_use and time.monotonic() >= checked + LEVEL_CHECK:
            try:
                in_use = await self.store.levels_in_use(queue.keys)
            except LeanMQError:
                return [queue.keys]
            self._levels[queue.stream] = (in_use, time.monotonic())
        return list(queue.keys.levels()) if in_use else [queue.keys]

    async def _mover(self, queue: Queue) -> None:
        cap_ms = self.settings.maintenance_interval * 1000
        while True:
            moved, wait_ms = 0, -1
            for keys in await self.levels(queue):
                try:
                    n, due_ms = await self.store.move_due(keys, _MOVE_BATCH)
                except LeanMQError as exc:
                    self.log.warning("move_due_failed", queue=queue.name, error=str(exc))
                    continue
                moved = max(moved, n)
                if due_ms >= 0:
                    wait_ms = due_ms if wait_ms < 0 else min(wait_ms, due_ms)
            self.moved += moved
            if moved >= _MOVE_BATCH:
                continue
            sleep_ms = cap_ms if wait_ms < 0 else min(max(wait_ms, 1), cap_ms)
            wake = self._wake[queue.stream] = anyio.Event()
            with anyio.move_on_after(sleep_ms / 1000):
                await wake.wait()

    async def _shared_mover(self) -> None:
        """The mover of every queue: one scan says which are due, one pipeline moves."""
        cap_ms = self.settings.maintenance_interval * 1000
        queues = list(self.queues.values())
        # Every priority level's delayed set (a missing one costs the scan next to nothing).
        levels = [(q, k) for q in queues for k in q.keys.levels()]
        delayed = [k.delayed for _, k in levels]
        while True:
            wake = self._wake[""] = anyio.Event()
            try:
                soonest, positions = await self.store.due_scan(delayed)
                due = [levels[i] for i in positions]
                results = await self.store.move_due_many([k for _, k in due], _MOVE_BATCH)
            except LeanMQError as exc:
                self.log.warning("move_due_failed", queues=len(queues), error=str(exc))
                soonest, due, results = -1, [], []
            again = False
            for (queue, _), result in zip(due, results, strict=True):
                if isinstance(result, LeanMQError):
                    self.log.warning("move_due_failed", queue=queue.name, error=str(result))
                    continue
                self.moved += result[0]
                again = again or result[0] >= _MOVE_BATCH or result[1] == 0
            if again:
                continue
            sleep_ms = cap_ms if soonest < 0 else min(soonest, cap_ms)
            with anyio.move_on_after(max(sleep_ms, 1) / 1000):
                await wake.wait()

    def nudge(self, stream: str) -> None:
        """A retry or delay was just scheduled on ``stream``: re-plan the mover's sleep now,
        so a short backoff is not stretched to ``maintenance_interval``."""
        wake = self._wake.get("" if self.shared else stream)
        if wake is not None:
            wake.set()

    async def _every(self, interval: float, step: Callable[[], Awaitable[object]]) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                await step()
            except LeanMQError as exc:
                self.log.warning(
                    "maintenance_failed", step=getattr(step, "__name__", "?"), error=str(exc)
                )

    async def expire_once(self) -> int:
        """Remove (or dead-letter) expired messages of every queue; return how many.

        Per queue, batches while a batch came back full, up to ``_EXPIRE_BATCHES`` of them
        (what is still due then is logged, and taken by the next pass). Entries pending
        in a group are left to their consumer and re-checked later (see
        ``lua/expire.lua``). Counted: messages that expired unhandled
        for some group; handled ones are removed too, but not reported again.
        """
        total = 0
        recheck_ms = max(1, int(self.settings.expire_interval * 1000))
        todo = list(self.queues.items())
        if self.shared:  # only the queues whose expiry index (of any level) has one due
            n_levels = len(LEVELS)
            expiry = [k.expiry for _, q in todo for k in q.keys.levels()]
            _, positions = await self.store.due_scan(expiry)
            due = {i // n_levels for i in positions}
            todo = [item for i, item in enumerate(todo) if i in due]
        for stream, queue in todo:
            policy = self.expired_policy[stream]
            n = 0
            for keys in await self.levels(queue):
                for _ in range(_EXPIRE_BATCHES):
                    result = await self.store.expire(
                        keys,
                        queue.name,
                        policy,
                        _EXPIRE_BATCH,
                        recheck_ms,
                        self.group_policies[stream],
                    )
                    n += result.unhandled
                    if result.scanned < _EXPIRE_BATCH or not result.left:
                        break
                else:
                    if result.left:
                        # ``left`` is counted up to one batch: "at least".
                        self.log.warning(
                            "expiry_behind", queue=queue.name, left_at_least=result.left
                        )
            if n:
                self.log.info("expired", queue=queue.name, count=n)
            total += n
        self.expired += total
        return total

    async def trim_once(self, *, only_under_pressure: bool = False) -> int:
        """Trim acknowledged history older than ``retention``; return entries removed.

        Under memory pressure (Redis above 90 % of ``maxmemory``) all acknowledged history
        is trimmed at once, whatever the retention (``trimmed_early``, with the reason):
        with ``noeviction`` a full Redis refuses every write, sends included, so history
        kept for an hour would keep the queue refusing messages. Entries some group has
        not acknowledged are never trimmed. ``only_under_pressure``: do nothing otherwise.
        """
        assert self.settings.retention is not None
        age_ms = int(self.settings.retention * 1000)
        usage = await self._memory()
        pressed = usage is not None and usage.under_pressure
        if pressed:
            age_ms = 0
        elif only_under_pressure:
            return 0
        total = 0
        for queue in self.queues.values():
            for keys in await self.levels(queue):
                total += await self.store.trim(keys.stream, age_ms)
        if usage is not None and pressed and total:
            self.log.warning(
                "trimmed_early",
                count=total,
                reason=f"memory pressure: {usage.describe()}",
                retention=self.settings.retention,
            )
        elif total:
            self.log.info("trimmed", count=total)
        self.trimmed += total
        return total

    async def _memory(self) -> MemoryUsage | None:
        """INFO memory, or None when it is refused (an ACL user without ``+info``: then
        only the retention trims; said once)."""
        try:
            return await self.store.memory()
        except RedisOperationError as exc:
            if not self._memory_warned:
                self._memory_warned = True
                self.log.warning("memory_check_failed", error=str(exc))
            return None

    async def relieve_memory_once(self) -> int:
        """Trim all acknowledged history now if Redis is under memory pressure."""
        return await self.trim_once(only_under_pressure=True)

    async def housekeeping_once(self) -> None:
        """Re-measure the Redis clock; remove long-idle consumers that hold nothing."""
        await self.store.sync_clock()
        for stream, groups in self.groups.items():
            idle_limit = max(self.settings.dead_consumer_idle, 10 * self.lease_ms[stream] / 1000)
            # Each priority level in use has consumers of its own (see priority.py).
            levels = [k.stream for k in await self.levels(self.queues[stream])]
            for group in groups:
                for level_stream in levels:
                    await self._remove_idle(level_stream, group, idle_limit)

    async def _remove_idle(self, stream: str, group: str, idle_limit: float) -> None:
        try:
            consumers = await self.store.consumers(stream, group)
        except RedisOperationError as exc:
            gone = "NOGROUP" in str(exc) or "no such key" in str(exc)
            if gone and stream not in self.queues:
                return  # a priority level's stream this group has not read yet, or none
            raise
        for consumer in consumers:
            if consumer["pending"] or consumer["idle"] < idle_limit * 1000:
                continue
            name = consumer["name"].decode()
            if await self.store.delete_consumer_if_idle(stream, group, name):
                self.log.info("consumer_removed", consumer=name, group=group)
