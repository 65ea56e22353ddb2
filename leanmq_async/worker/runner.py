"""Running one handler: fetch, process, settle (ack, retry or dead-letter), keep leases.

Per handler a :class:`HandlerRunner` owns, inside one task group:

* a fetch loop that reads with XREADGROUP exactly as many messages as there are free
  slots (so a worker never hoards messages), and a reclaim loop that claims messages left
  idle past the lease by dead consumers, both feeding a memory object stream;
* ``concurrency`` processor tasks that take messages from that stream;
* an acker that coalesces the acknowledgements of finished messages into batched XACKs;
* a lease keeper that extends the lease of every message still held.

Settling steps (ack, retry, dead-letter) run shielded and time-bounded: they complete or
never start, and a message whose settling failed simply stays pending for reclaim.
"""

from __future__ import annotations

import linecache
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from leanmq_async._log import get_logger
from leanmq_async.envelope import decode_entry, decode_payload
from leanmq_async.exceptions import (
    LeanMQConnectionError,
    LeanMQError,
    MessageDecodeError,
    RedisOperationError,
    Reject,
    Retry,
)
from leanmq_async.reading import to_message
from leanmq_async.worker.backoff import exponential_backoff
from leanmq_async.worker.dispatch import WorkQueue
from leanmq_async.worker.observer import has_handler_context
from leanmq_async.worker.settle_batch import SettleBatcher

if TYPE_CHECKING:
    from leanmq_async.envelope import DecodedEntry
    from leanmq_async.store import RawEntry
    from leanmq_async.worker.handler import Handler
    from leanmq_async.worker.supervisor import WorkerSettings

__all__ = ["HandlerRunner", "RunnerStats"]

T = TypeVar("T")

_TRACEBACK_LIMIT = 4000
# How long a busy worker waits to gather a batch of free slots before a read, and of
# finished messages before an XACK: a few ms of delay buys batched round trips.
_LINGER = 0.002
# Most entries one reclaim step claims (a worker with large concurrency reclaims a big
# backlog in several steps of one scan).
_RECLAIM_BATCH = 1000


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


class _Work:
    __slots__ = ("deliveries", "fetched", "fields", "sid")

    def __init__(
        self, sid: bytes, fields: dict[bytes, bytes] | None, deliveries: int, fetched: float
    ) -> None:
        self.sid = sid
        self.fields = fields
        self.deliveries = deliveries
        self.fetched = fetched  # time.monotonic() when read or claimed


def _traceback_summary(exc: BaseException) -> str:
    """The failure's traceback for its DLQ entry: innermost 8 frames, causes included.

    Formatted here: ``traceback.format_exception`` on Python 3.11 finds each frame's
    column positions (a walk over the code object) and parses its source line to draw
    ``^^^`` markers, which made a failing message cost more CPU than handling a hundred
    good ones.
    """
    chain: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        lines = ["Traceback (most recent call last):\n"]
        for frame, lineno in list(traceback.walk_tb(current.__traceback__))[-8:]:
            code = frame.f_code
            lines.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
            source = linecache.getline(code.co_filename, lineno).strip()
            if source:
                lines.append(f"    {source}\n")
        lines.extend(traceback.format_exception_only(type(current), current))
        chain.append("".join(lines))
        if current.__cause__ is not None:
            chain.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
            )
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            chain.append(
                "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
            current = current.__context__
        else:
            current = None
    return "".join(reversed(chain))[-_TRACEBACK_LIMIT:]


class HandlerRunner:
    """Runs one handler of one worker process."""

    def __init__(self, handler: Handler, settings: WorkerSettings, consumer: str) -> None:
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
        # A message waiting longer than this between its read and its start (a blocked
        # event loop) has its lease confirmed first: another worker may have taken it.
        self._confirm_after = handler.options.visibility_timeout / 2
        self.max_size = queue.mq.codec.max_message_size
        self.stats = RunnerStats()
        self._read_batch = max(1, min(self.concurrency // 4, 250))
        # In burst mode a short block: an empty read is how the drain's end is noticed.
        self._block_ms = min(settings.block_ms, 100) if settings.burst else settings.block_ms
        self.log = get_logger("leanmq_async.worker", queue=queue.name, group=self.group)
        self._debug = logging.getLogger("leanmq_async.worker").isEnabledFor(logging.DEBUG)
        # Instrumentation (worker/observer.py): without observers, the hot path only
        # tests these for truth.
        self._observers: tuple[Any, ...] = settings.observers
        self._contexts = tuple(o for o in self._observers if has_handler_context(o))
        self._timed = self._debug or bool(self._observers)
        self._free = self.concurrency
        self._slot_freed = anyio.Event()
        self._reclaim_waiting = False
        self._read_scope: anyio.CancelScope | None = None
        self._stop = anyio.Event()
        self._in_flight: set[bytes] = set()
        self._work: WorkQueue[_Work] = WorkQueue()
        self._acks: list[bytes] = []
        self._batcher = SettleBatcher(self.store)
        self._acking: set[bytes] = set()  # acks an XACK under way carries
        self._ack_wakeup = anyio.Event()
        self._processors: anyio.CancelScope | None = None
        self._redis_down = False
        self.reclaim_scans = 0  # reclaim intervals begun (tests count them)
        self.drained = anyio.Event()
        # Called after a retry is scheduled (the worker wakes its delayed-message mover).
        self.on_scheduled: Callable[[str], None] = lambda stream: None
        self.burst_done = anyio.Event()

    def __repr__(self) -> str:
        return (
            f"<HandlerRunner {self.handler.name} queue={self.queue.name!r} group={self.group!r} "
            f"in_flight={len(self._in_flight)}/{self.concurrency}>"
        )

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop_fetching` and the drain (or :meth:`cancel_processors`)."""
        async with anyio.create_task_group() as services:
            services.start_soon(self._acker)
            services.start_soon(self._lease_keeper)
            async with anyio.create_task_group() as processors:
                self._processors = processors.cancel_scope
                for _ in range(self.concurrency):
                    processors.start_soon(self._processor)
                try:
                    task_status.started()
                    await self._recover_own_pending()
                    async with anyio.create_task_group() as feeders:
                        feeders.start_soon(self._fetch_loop)
                        feeders.start_soon(self._reclaim_loop)
                finally:
                    self._work.close()
            self.drained.set()
            await self._flush_acks()
            services.cancel_scope.cancel()

    def stop_fetching(self) -> None:
        """Phase one of shutdown: read nothing more; held messages are still handled.

        A blocking read under way is abandoned (its connection is closed), so nothing that
        arrives after this call is read. Should Redis have answered it at that very moment,
        those entries stay pending for this consumer and are reclaimed after the lease.
        """
        self._stop.set()
        self._slot_freed.set()
        if self._read_scope is not None:
            self._read_scope.cancel()

    def cancel_processors(self) -> None:
        """Phase two: cancel handlers still running; their messages stay pending."""
        self.stop_fetching()
        if self._processors is not None:
            self._processors.cancel()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when shutdown begins."""
        with anyio.move_on_after(seconds):
            await self._stop.wait()

    # -- slots ---------------------------------------------------------------------------

    async def _reserve(self, *, reclaiming: bool = False, batch: int = 1) -> int:
        """Wait for free slots and reserve all of them; 0 when shutting down.

        With ``batch`` > 1, once a slot is free wait up to ``_LINGER`` more for ``batch``
        of them: a busy worker then reads in batches instead of one message per round
        trip, and an idle one (all slots free) reads at once.

        Every waiter waits on the same event (it is only replaced once set), so a release
        wakes them all. The reclaim loop goes first: the fetch loop gives its slots back
        after each read and would otherwise take them again at once, starving reclaims.
        """
        while True:
            if reclaiming:
                self._reclaim_waiting = True
            try:
                while not self._stop.is_set() and (
                    self._free == 0 or (self._reclaim_waiting and not reclaiming)
                ):
                    if self._slot_freed.is_set():
                        self._slot_freed = anyio.Event()
                    await self._slot_freed.wait()
            finally:
                if reclaiming:
                    self._reclaim_waiting = False
            if self._free < batch and not self._stop.is_set():
                with anyio.move_on_after(_LINGER):
                    while self._free < batch and not self._stop.is_set():
                        if self._slot_freed.is_set():
                            self._slot_freed = anyio.Event()
                        await self._slot_freed.wait()
            if self._stop.is_set():
                return 0
            # Another loop (the reclaim loop goes first) may have taken every free slot
            # while this one lingered: wait again, never return 0 unless stopping (0 ends
            # the caller's loop for good).
            if self._free:
                n, self._free = self._free, 0
                return n

    async def _reserve_batch(self, *, reclaiming: bool = False) -> int:
        """Reserve free slots for one reclaim step: at most ``_RECLAIM_BATCH``."""
        n = await self._reserve(reclaiming=reclaiming)
        self._release(max(0, n - _RECLAIM_BATCH))
        return min(n, _RECLAIM_BATCH)

    def _release(self, n: int) -> None:
        if n:
            self._free += n
            self._slot_freed.set()

    def _dispatch(
        self, entries: Iterable[tuple[bytes, Any]], deliveries: Mapping[bytes, int] | int
    ) -> None:
        """Hand read or claimed entries to the processors (their slots are reserved)."""
        now = time.monotonic()
        works = [
            _Work(
                sid,
                fields,
                deliveries if isinstance(deliveries, int) else deliveries.get(sid, 2),
                now,
            )
            for sid, fields in entries
        ]
        self._in_flight.update(w.sid for w in works)
        self._work.put_many(works)

    # -- feeding -------------------------------------------------------------------------

    async def _recover_own_pending(self) -> None:
        """At start, handle what this consumer name still holds from a previous run."""
        start = "-"
        while not self._stop.is_set():
            n = await self._reserve_batch()
            if n == 0:
                return
            try:
                found = await self.store.reclaim(
                    self.stream, self.group, self.consumer, 0, n, start, owner=self.consumer
                )
            except LeanMQError as exc:
                self._release(n)
                self.log.warning("recover_pending_failed", error=str(exc))
                return
            self._release(n - len(found.entries))
            self._report_missing(found.missing)
            self._dispatch(found.entries, found.deliveries)
            if found.entries:
                self.log.info("recovered_pending", count=len(found.entries))
            if not found.next_start:
                return
            start = found.next_start

    async def _fetch_loop(self) -> None:
        failures = 0
        while True:
            n = await self._reserve(batch=self._read_batch)
            if n == 0:
                return
            entries: list[RawEntry] = []
            # Acks buffered so far ride with the read: no XACK round trip of their own.
            acks, self._acks = self._acks, []
            self._acking.update(acks)
            read = False
            try:
                # Cancelled by stop_fetching: no read outlives the decision to stop.
                with anyio.CancelScope() as self._read_scope:
                    entries = await self.store.read_group(
                        self.stream, self.group, self.consumer, n, self._block_ms, acks=acks
                    )
                    read = True
            except LeanMQError as exc:
                self._release(n)
                failures += 1
                await self._on_redis_error(exc, failures)
                continue
            finally:
                scope, self._read_scope = self._read_scope, None
                self._acking.difference_update(acks)
                if not read and acks:
                    # Unknown whether the XACK ran (XACK again is harmless): keep them.
                    self._acks = acks + self._acks
            if scope is not None and scope.cancel_called and not entries:
                self._release(n)
                return
            if failures or self._redis_down:
                failures = 0
                self._on_redis_back()
            self._release(n - len(entries))
            self.stats.received += len(entries)
            if entries:
                self._dispatch(entries, 1)
                # Let the processors start on these before the next read is sent: it
                # saves the handlers the time it takes to issue that read.
                await anyio.lowlevel.checkpoint()
            elif self.settings.burst and await self._burst_done():
                self.burst_done.set()
                return

    async def _burst_done(self) -> bool:
        """In burst mode: is there nothing left in flight, pending, scheduled or unread?

        Unread too: a retry the mover put into the stream just after a read came back
        empty is neither pending nor delayed any more, but still to be handled.
        """
        if self._free != self.concurrency or self._acks:
            return False
        (info,) = await self.store.stream_infos([(self.stream, self.queue.keys)])
        mine = [g for g in info["groups"] if g["name"].decode() == self.group]
        if not mine or int(mine[0]["pending"]) or info["delayed"]:
            return False
        last = mine[0]["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else str(last)
        return not await self.store.range(self.stream, f"({last}", "+", 1)

    async def _reclaim_loop(self) -> None:
        """Every interval, scan the pending list for entries idle past the lease.

        A scan goes on while there is more (bounded batches, as free slots allow), so a
        large idle backlog (say after Redis refused writes for a while) is taken back in
        one scan, not ``concurrency`` entries per interval.
        """
        interval = self.settings.reclaim_interval or min(5.0, self.lease_ms / 2000)
        start = "-"
        while True:
            if start == "-":
                await self._pause(interval)
                self.reclaim_scans += 1
            if self._stop.is_set():
                return
            n = await self._reserve_batch(reclaiming=True)
            if n == 0:
                return
            try:
                found = await self.store.reclaim(
                    self.stream, self.group, self.consumer, self.lease_ms, n, start
                )
            except LeanMQError as exc:
                self._release(n)
                self.log.warning("reclaim_failed", error=str(exc))
                start = "-"
                continue
            start = found.next_start or "-"
            # An entry this worker is still handling (its lease ran out while Redis was
            # slow to answer the extension) is now ours again: do not run it twice.
            # One it handled whose ack could not be written yet (Redis was away longer than
            # settle_timeout) is done: send that ack rather than run it again.
            unacked = {*self._acks, *self._acking}
            claimed = [
                e for e in found.entries if e[0] not in self._in_flight and e[0] not in unacked
            ]
            if unacked and len(claimed) < len(found.entries):
                self._ack_wakeup.set()
            self._release(n - len(claimed))
            self._report_missing(found.missing)
            if claimed:
                self.stats.reclaimed += len(claimed)
                self.log.info("reclaimed", count=len(claimed))
                if self._observers:
                    self._notify("on_reclaimed", len(claimed))
            self._dispatch(claimed, found.deliveries)

    def _report_missing(self, missing: list[bytes]) -> None:
        if missing:
            self.stats.lost += len(missing)
            self.log.error(
                "entries_missing",
                count=len(missing),
                ids=[m.decode() for m in missing[:20]],
                detail="deleted or trimmed from the stream while pending; acked, not handled",
            )

    async def _on_redis_error(self, exc: LeanMQError, failures: int) -> None:
        # NOGROUP: the group (or stream) is missing. UNBLOCKED: the stream was deleted
        # while this worker's read waited on it.
        missing = "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc)
        if isinstance(exc, RedisOperationError) and missing:
            try:
                created = await self._recreate_queue()
            except LeanMQError:
                created = 0
            if created:
                self.log.warning("group_created", reason="consumer group was missing")
                return
        if isinstance(exc, LeanMQConnectionError) and not self._redis_down:
            self._redis_down = True
            self.log.warning("redis_unavailable", error=str(exc))
        elif not isinstance(exc, LeanMQConnectionError):
            self.log.error("fetch_failed", error=str(exc))
        await self._pause(min(5.0, 0.05 * 2 ** min(failures, 7)))

    async def _recreate_queue(self) -> int:
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

    def _on_redis_back(self) -> None:
        if self._redis_down:
            self._redis_down = False
            self.log.info("redis_reconnected")

    # -- processing ----------------------------------------------------------------------

    async def _processor(self) -> None:
        work_queue = self._work
        while (work := await work_queue.get()) is not None:
            try:
                if time.monotonic() - work.fetched > self._confirm_after and (
                    not await self._still_held(work)
                ):
                    continue
                await self._process(work)
            finally:
                self._in_flight.discard(work.sid)
                self._free += 1
                self._slot_freed.set()

    async def _still_held(self, work: _Work) -> bool:
        """Confirm (and extend) the lease of a message read long ago and not started yet.

        It waited past half its lease (the event loop was blocked, say): if another worker
        reclaimed it meanwhile, running it here too would run it twice, so it is skipped.
        """
        try:
            lost = await self.store.extend_leases(
                self.stream, self.group, self.consumer, [work.sid]
            )
        except LeanMQError as exc:
            self.log.warning("lease_extend_failed", error=str(exc))
            return True  # unknown: run it, as without this check
        if lost:
            self.log.warning(
                "lease_lost",
                id=work.sid.decode(),
                waited=round(time.monotonic() - work.fetched, 3),
                detail="read but not started within its lease; another worker has it: skipped",
            )
            return False
        return True

    async def _process(self, work: _Work) -> None:
        handler = self.handler
        sid = work.sid.decode()
        if work.deliveries > handler.options.max_deliveries:
            await self._dead_letter(
                sid,
                f"delivered {work.deliveries} times without completing (max_deliveries="
                f"{handler.options.max_deliveries}): it may crash the worker",
                "MaxDeliveriesExceeded",
            )
            return
        try:
            entry = decode_entry(work.fields, self.max_size)
        except MessageDecodeError as exc:
            await self._dead_letter(sid, str(exc), "MessageDecodeError")
            return
        if entry.target_group is not None and entry.target_group != self.group:
            self._ack(work.sid)
            return
        expires = entry.expires_at_ms
        # The local estimate pre-filters; Redis confirms (a stepped host clock is harmless).
        if (
            expires is not None
            and expires <= await self.store.redis_now_ms()
            and await self._expire(sid, expires, entry.message_id)
        ):
            return
        try:
            payload = decode_payload(entry, handler.payload_type)
        except MessageDecodeError as exc:
            await self._dead_letter(
                sid,
                str(exc),
                "MessageDecodeError",
                attempts=entry.attempts,
                message_id=entry.message_id,
            )
            return
        attempt = entry.attempts + 1
        arg = (
            to_message(sid, entry, payload, self.queue.name, work.deliveries)
            if handler.wants_message
            else payload
        )
        timeout = handler.options.timeout
        debug = self._debug
        if debug:
            self.log.debug("received", message_id=entry.message_id, id=sid, attempt=attempt)
        started = anyio.current_time() if self._timed or timeout is not None else 0.0
        try:
            if self._contexts:
                await self._call_observed(arg, sid, entry, payload, work.deliveries)
            elif timeout is None:
                await handler.func(arg)
            else:
                with anyio.fail_after(timeout):
                    await handler.func(arg)
        except Reject as exc:
            self.stats.failed += 1
            if self._observers:
                self._notify("on_failed", entry.message_id, exc, anyio.current_time() - started)
            await self._dead_letter(
                sid, exc.reason, "Reject", attempts=attempt, message_id=entry.message_id
            )
        except Retry as exc:
            self.stats.failed += 1
            if self._observers:
                self._notify("on_failed", entry.message_id, exc, anyio.current_time() - started)
            await self._fail(sid, entry, attempt, exc, exc.delay)
        except Exception as exc:  # noqa: BLE001 - every handler failure is retried or dead-lettered
            self.stats.failed += 1
            # Only our deadline is reported as the handler's timeout, not a TimeoutError the
            # handler raised itself (an HTTP client's, say); the original stays chained.
            if (
                isinstance(exc, TimeoutError)
                and timeout is not None
                and anyio.current_time() >= started + timeout
            ):
                timed_out = TimeoutError(f"handler exceeded its timeout of {timeout}s")
                timed_out.__cause__ = exc
                exc = timed_out
            if self._observers:
                self._notify("on_failed", entry.message_id, exc, anyio.current_time() - started)
            await self._fail(sid, entry, attempt, exc, None)
        else:
            self._ack(work.sid)
            self.stats.handled += 1
            if self._observers:
                self._notify("on_handled", entry.message_id, anyio.current_time() - started)
            if debug:
                self.log.debug(
                    "handled",
                    message_id=entry.message_id,
                    id=sid,
                    attempt=attempt,
                    duration=anyio.current_time() - started,
                )

    async def _call_observed(
        self, arg: Any, sid: str, entry: DecodedEntry, payload: Any, deliveries: int
    ) -> None:
        """Call the handler inside the observers' ``handler_context`` (tracing spans)."""
        handler = self.handler
        message = (
            arg
            if handler.wants_message
            else to_message(sid, entry, payload, self.queue.name, deliveries)
        )
        async with AsyncExitStack() as stack:
            for observer in self._contexts:
                try:
                    context = observer.handler_context(self, message)
                    if context is not None:
                        await stack.enter_async_context(context)
                except Exception as exc:  # noqa: BLE001 - instrumentation never fails a message
                    self.log.error(
                        "observer_failed",
                        hook="handler_context",
                        observer=type(observer).__name__,
                        error=repr(exc),
                    )
            timeout = handler.options.timeout
            if timeout is None:
                await handler.func(arg)
            else:
                with anyio.fail_after(timeout):
                    await handler.func(arg)

    def _notify(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every observer that has it; a hook that raises is logged."""
        for observer in self._observers:
            method = getattr(observer, hook, None)
            if method is None:
                continue
            try:
                method(self, *args)
            except Exception as exc:  # noqa: BLE001 - instrumentation never fails a message
                self.log.error(
                    "observer_failed", hook=hook, observer=type(observer).__name__, error=repr(exc)
                )

    async def _fail(
        self,
        sid: str,
        entry: DecodedEntry,
        attempt: int,
        exc: BaseException,
        delay: float | None,
    ) -> None:
        handler = self.handler
        error_type = type(exc).__name__
        if attempt <= handler.max_retries:
            seconds = delay if delay is not None else self._backoff(attempt)
            call = self.store.retry_call(
                self.queue.keys, self.group, self.consumer, sid, int(seconds * 1000), attempt
            )
            result = await self._settle(lambda: self._batcher.call(call))
            if result == -1:
                self.log.warning("lease_lost", id=sid, message_id=entry.message_id)
            elif result == 0:
                # Expiry and trimming never touch a pending entry: this one was deleted
                # under us by a user call (delete_messages, purge). Counted, not hidden.
                self.stats.lost += 1
                self.log.error(
                    "retry_skipped",
                    id=sid,
                    message_id=entry.message_id,
                    reason="entry deleted from the stream while handled: it cannot be retried",
                )
            elif result is not None:
                self.stats.retried += 1
                if self._observers:
                    self._notify("on_retried", entry.message_id, attempt, seconds)
                if seconds > 0:
                    self.on_scheduled(self.stream)
                self.log.info(
                    "retried",
                    id=sid,
                    message_id=entry.message_id,
                    attempt=attempt,
                    delay=round(seconds, 3),
                    error_type=error_type,
                    error=str(exc),
                )
            return
        await self._dead_letter(
            sid,
            f"failed after {attempt} attempt(s): {error_type}: {exc}",
            error_type,
            _traceback_summary(exc),
            attempt,
            entry.message_id,
        )

    def _backoff(self, attempt: int) -> float:
        """The handler's backoff for retry ``attempt``; the default one if it misbehaves.

        A backoff function that raises or returns something other than a finite number
        >= 0 must not kill the worker (nor lose the message): it is logged, and retried
        after the default exponential backoff.
        """
        try:
            seconds = float(self.handler.options.backoff(attempt))
        except Exception as exc:  # noqa: BLE001 - user code; reported, never fatal
            self.log.error("backoff_failed", attempt=attempt, error=repr(exc))
            return exponential_backoff(attempt)
        if not math.isfinite(seconds) or seconds < 0:
            self.log.error("backoff_failed", attempt=attempt, error=f"returned {seconds!r}")
            return exponential_backoff(attempt)
        return seconds

    async def _dead_letter(
        self,
        sid: str,
        reason: str,
        error_type: str,
        details: str = "",
        attempts: int = 0,
        message_id: str = "",
    ) -> int | None:
        """Move the entry to the DLQ if this consumer still holds it; 1 when moved."""
        call = self.store.dead_letter_call(
            self.queue.keys,
            self.group,
            self.consumer,
            self.queue.name,
            (sid, reason, error_type, details, attempts),
        )
        moved = await self._settle(lambda: self._batcher.call(call))
        if moved:
            self.stats.dead_lettered += 1
            if self._observers:
                self._notify("on_dead_lettered", message_id, reason, error_type)
            self.log.warning(
                "dead_lettered",
                id=sid,
                message_id=message_id,
                reason=reason,
                error_type=error_type,
                attempts=attempts,
            )
        elif moved == 0:
            self.log.warning("lease_lost", id=sid, message_id=message_id)
        return moved

    async def _expire(self, sid: str, expires_at_ms: int, message_id: str = "") -> bool:
        """Settle an entry this runner thinks expired, if the Redis clock agrees.

        One script (:data:`~leanmq_async.scripts.EXPIRE_READ`) checks ``x`` against Redis
        TIME and only then acks it (``expired="drop"``) or dead-letters it for this group
        (``"dlq"``). False when Redis says it is still live: the caller handles it.
        """
        policy = self.handler.options.expired
        call = self.store.expire_read_call(
            self.queue.keys, self.group, self.consumer, self.queue.name, policy, sid, expires_at_ms
        )
        result = await self._settle(lambda: self._batcher.call(call))
        if result == 0:
            return False
        if result == 1:
            self.stats.expired += 1
            if policy == "dlq":
                self.stats.dead_lettered += 1
                self.log.warning(
                    "dead_lettered",
                    id=sid,
                    message_id=message_id,
                    reason="expired",
                    error_type="Expired",
                    attempts=0,
                )
                if self._observers:
                    self._notify("on_dead_lettered", message_id, "expired", "Expired")
            else:
                self.log.info("expired", id=sid)
            if self._observers:
                self._notify("on_expired", message_id)
        elif result == -1:
            self.log.warning("lease_lost", id=sid, message_id=message_id)
        return True

    async def _settle(self, step: Callable[[], Awaitable[T]]) -> T | None:
        """Run a settling step shielded from cancellation, retrying connection errors.

        Gives up after ``settle_timeout``: the message then stays pending and is reclaimed.
        """
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.settle_timeout):
            pause = 0.05
            while True:
                try:
                    return await step()
                except LeanMQConnectionError:
                    await anyio.sleep(pause)
                    pause = min(1.0, pause * 2)
                except LeanMQError as exc:
                    self.log.error("settle_failed", error=str(exc))
                    return None
        self.log.error("settle_failed", error="Redis unreachable for settle_timeout")
        return None

    # -- acknowledging -------------------------------------------------------------------

    def _ack(self, sid: bytes) -> None:
        self._acks.append(sid)
        self._ack_wakeup.set()

    async def _acker(self) -> None:
        while True:
            await self._ack_wakeup.wait()
            # Let acks of messages finishing right now join this XACK.
            await anyio.sleep(_LINGER)
            self._ack_wakeup = anyio.Event()
            await self._flush_acks(drain=False)

    async def _flush_acks(self, *, drain: bool = True) -> None:
        """XACK what is buffered, shielded; on a broken connection keep and retry.

        ``drain=False`` (the acker) sends one batch: acks arriving meanwhile wait for the
        next linger, so they are coalesced instead of sent a few at a time.
        """
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.settle_timeout):
            pause = 0.05
            while self._acks:
                batch, self._acks = self._acks, []
                self._acking.update(batch)
                try:
                    await self.store.ack(self.stream, self.group, batch)
                except LeanMQConnectionError:
                    self._acks = batch + self._acks
                    await anyio.sleep(pause)
                    pause = min(1.0, pause * 2)
                    continue
                except LeanMQError as exc:
                    self.log.error("ack_failed", error=str(exc), count=len(batch))
                except BaseException:
                    # settle_timeout ran out mid-XACK: keep the batch (counted below, and
                    # sent with the next one) instead of forgetting it.
                    self._acks = batch + self._acks
                    raise
                finally:
                    self._acking.difference_update(batch)
                if not drain:
                    return
        if drain and self._acks:
            self.log.error("ack_failed", error="Redis unreachable", count=len(self._acks))

    # -- leases --------------------------------------------------------------------------

    async def _lease_keeper(self) -> None:
        interval = self.lease_ms / 3000
        while True:
            await anyio.sleep(interval)
            held = list(self._in_flight)
            if not held:
                continue
            try:
                lost: list[bytes] = []
                for i in range(0, len(held), 1000):
                    lost += await self.store.extend_leases(
                        self.stream, self.group, self.consumer, held[i : i + 1000]
                    )
            except LeanMQError as exc:
                self.log.warning("lease_extend_failed", error=str(exc))
                continue
            if lost:
                self.log.warning("lease_lost", count=len(lost))
            if self._debug:
                self.log.debug("lease_extended", count=len(held) - len(lost))
