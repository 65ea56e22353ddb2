"""The executor's rate-limit step: ask the limiter in Redis for a start, or defer.

A handler with ``rate_limit=`` (:class:`~leanmq_async.RateLimit`) gets a :class:`Limiter`.
Before each handler call, :meth:`Limiter.admit`:

* a copy that came back from the delayed set holding a reservation (field ``rl``, first
  delivery of that entry) starts on it without asking again, if it is on time;
* otherwise the key function (if any) names the limiter's log; one that raises or
  returns no str/int dead-letters the message;
* ``lua/rate_limit.lua`` grants a start: now (the handler runs), or later:
  ``lua/defer.lua`` acks the entry and holds its copy in the delayed set of its priority
  level until that start, attempts unchanged (it is not a failure); the delayed mover
  brings it back at its level. A message cancelled meanwhile is not deferred: it is
  dead-lettered "cancelled", never run.

The processors asking at the same moment share one script call (``Limiter._grant``): the
first asker leads, sends every ask waiting (up to ``_MAX_BATCH``, any keys: they share
the queue's slot), hands each its grant, and passes the lead to the next waiting ask. Not
shielded (a grant settles nothing): cancelled or failed, the message stays pending.

The limiter spaces grants by ``per`` plus a slack, so handlers that start up to the slack
after their grant keep every window within the limit. A reservation found later than
that when its copy comes back (a busy worker, a slow mover) is not used: the message asks
again, and waits for its new grant. A grant of "now" starts at once (its lateness is
this worker's own scheduling delay, not a wait in Redis).

The limiter's log lives in the queue's slot (its logical name's, for a partition: one
limit across the partitions), so the check and the defer are two scripts; a crash between
them leaves the entry pending (reclaimed and asked again: nothing lost) and one granted
start unused (stricter, never looser).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from leanmq_async.exceptions import LeanMQError
from leanmq_async.keys import QueueKeys, default_group
from leanmq_async.priority import split_id
from leanmq_async.reading import to_message

if TYPE_CHECKING:
    from leanmq_async.envelope import DecodedEntry
    from leanmq_async.rate_limit import RateLimit
    from leanmq_async.worker.handler import Handler
    from leanmq_async.worker.settler import Settler
    from leanmq_async.worker.state import RunnerState, Work

__all__ = ["FIELD_RESERVED", "Limiter"]

FIELD_RESERVED = b"rl"
"""The stream field of a deferred copy: the start (ms, Redis clock) it holds."""

_MAX_BATCH = 500  # asks per script call


class _Ask:
    __slots__ = ("done", "finished", "granted", "log")

    def __init__(self, log: str) -> None:
        self.log = log
        self.done = anyio.Event()  # set when answered, or woken to lead
        self.finished = False
        self.granted: int | None = None


def _scope(handler: Handler) -> tuple[QueueKeys, str]:
    """The keys and group naming the limiter: a partition's are its logical queue's."""
    queue = handler.queue
    for partitioned in queue.mq._partitioned.values():
        if queue in partitioned.partitions:
            logical = QueueKeys(queue.mq.prefix, partitioned.name)
            group = handler.options.group or default_group(partitioned.name)
            return logical, group
    return queue.keys, handler.group


class Limiter:
    """The rate-limit step of one runner; see the module docstring."""

    def __init__(self, handler: Handler, limit: RateLimit, settler: Settler, state: RunnerState):
        self.handler = handler
        self.limit = limit
        self.settler = settler
        self.store = handler.queue.mq.store
        self.stats = state.stats
        self.log = state.log
        self.queue = handler.queue
        keys, group = _scope(handler)
        self.log_key = keys.rate_limit(group)
        self._keys = keys
        self._group = group
        self.per_ms = limit.per_ms
        self.slack_ms = limit.slack_ms
        self._asks: list[_Ask] = []
        self._leading = False

    async def admit(self, work: Work, sid: str, entry: DecodedEntry, payload: Any) -> int | None:
        """The start granted now (ms, Redis clock), or None: not to start now (deferred,
        dead-lettered, or left pending for reclaim when Redis could not be asked)."""
        fields = work.fields or {}
        reserved = fields.get(FIELD_RESERVED)
        if reserved is not None and work.deliveries == 1:
            try:
                start = int(reserved)
            except ValueError:
                start = 0  # not ours: ask the limiter
            if await self._on_time(start):
                return start
            self.stats.rate_limit_late += 1
        log_key = self.log_key
        if self.limit.key is not None:
            found = await self._key_of(work, sid, entry, payload)
            if found is None:
                return None
            log_key = self._keys.rate_limit(self._group, found)
        granted = await self._grant(log_key)
        if granted is None:
            return None
        if granted < 0:
            return -granted  # now: the handler starts at once
        await self._defer(sid, entry, granted)
        return None

    async def _grant(self, log: str) -> int | None:
        """One start from ``log``, asked with the others asking now; None: Redis failed."""
        ask = _Ask(log)
        self._asks.append(ask)
        try:
            while True:
                if not self._leading:
                    await self._lead()
                await ask.done.wait()
                if ask.finished:
                    return ask.granted
                ask.done = anyio.Event()  # woken to lead: lead, unless another does
        except BaseException:
            with contextlib.suppress(ValueError):
                self._asks.remove(ask)
            if not self._leading:
                self._hand_on()
            raise

    async def _lead(self) -> None:
        self._leading = True
        batch: list[_Ask] = []
        try:
            await anyio.lowlevel.checkpoint()  # let the processors asking right now join
            batch, self._asks = self._asks[:_MAX_BATCH], self._asks[_MAX_BATCH:]
            counts: dict[str, int] = {}
            for ask in batch:
                counts[ask.log] = counts.get(ask.log, 0) + 1
            try:
                grants = await self.store.rate_limit(
                    list(counts),
                    list(counts.values()),
                    self.limit.limit,
                    self.per_ms,
                    self.slack_ms,
                )
            except LeanMQError as exc:
                self.log.warning("rate_limit_unavailable", error=str(exc), count=len(batch))
                return
            by_log: dict[str, Iterator[int]] = {}
            at = 0
            for log, n in counts.items():
                by_log[log], at = iter(grants[at : at + n]), at + n
            for ask in batch:
                ask.granted = next(by_log[ask.log])
        finally:
            self._leading = False
            for ask in batch:  # granted, or None: Redis failed or the leader was cancelled
                ask.finished = True
                ask.done.set()
            self._hand_on()

    def _hand_on(self) -> None:
        """Wake the oldest waiting ask: it leads the next call (if nobody does by then)."""
        if self._asks:
            self._asks[0].done.set()

    async def _on_time(self, start_ms: int) -> bool:
        """May a start granted at ``start_ms`` begin now (at most the slack late)?"""
        try:
            now = await self.store.redis_now_ms()
        except LeanMQError:
            now = await self.store.redis_now_ms(max_age=math.inf)
        return now - start_ms <= self.slack_ms

    async def _key_of(self, work: Work, sid: str, entry: DecodedEntry, payload: Any) -> str | None:
        """The message's limiter key, or None when the key function failed (dead-lettered)."""
        assert self.limit.key is not None
        message = to_message(sid, entry, payload, self.queue.name, work.deliveries)
        try:
            key = self.limit.key(message)
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise TypeError(f"it returned {type(key).__name__}, not a str or int")
        except Exception as exc:  # noqa: BLE001 - a user function: any failure dead-letters
            await self.settler.dead_letter(
                sid,
                f"rate limit key failed: {type(exc).__name__}: {exc}",
                "RateLimitKeyError",
                attempts=entry.attempts,
                message_id=entry.message_id,
            )
            return None
        return str(key)

    async def _defer(self, sid: str, entry: DecodedEntry, start_ms: int) -> None:
        """Hold the entry in its priority level's delayed set until ``start_ms``; one
        cancelled meanwhile (defer.lua answers 2) is dead-lettered "cancelled" unrun."""
        message_id = entry.message_id
        raw, level = split_id(sid)  # a deferral keeps its priority, as a retry does
        keys = self.queue.keys.at(level)
        call = self.store.defer_call(keys, self.handler.group, self.settler.consumer, raw, start_ms)
        result = await self.settler.run_call(call)
        if result == 2:
            self.log.info("cancelled", id=sid, message_id=message_id, started=False)
            await self.settler.dead_letter(
                sid, "cancelled", "Cancelled", attempts=entry.attempts, message_id=message_id
            )
        elif result == 1:
            self.stats.rate_limited += 1
            self.settler.on_scheduled(self.settler.stream)
            self.log.debug("rate_limited", id=sid, message_id=message_id, start_ms=start_ms)
        elif result == -1:
            self.log.warning("lease_lost", id=sid, message_id=message_id)
        elif result == 0:
            self.stats.lost += 1
            self.log.error(
                "defer_skipped",
                id=sid,
                message_id=message_id,
                reason="entry deleted from the stream while handled: it cannot be deferred",
            )
