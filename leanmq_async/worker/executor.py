"""Processing one message: decode, triage, call the handler, map the outcome.

The middle part of a runner's pipeline (see :mod:`leanmq_async.worker.runner`).
``concurrency`` processor tasks (:meth:`Executor.run`) take
:class:`~leanmq_async.worker.state.Work` items from the work queue. For each:

1. one that waited past half its lease is confirmed first
   (:meth:`~leanmq_async.worker.leases.LeaseKeeper.still_held`), skipped if lost;
2. delivered more than ``max_deliveries`` times (it may crash the worker): dead-lettered;
3. triage (:func:`leanmq_async.reading.triage_entry`): undecodable → dead-lettered; meant
   for another group → acked; expired (Redis confirms) → dropped or dead-lettered;
4. the payload is decoded (a bad one → dead-lettered); with a ``rate_limit`` the
   :class:`~leanmq_async.worker.limiter.Limiter` grants the start now, or defers the
   message to its granted start (no attempt used); the handler is called, with
   its ``timeout`` and inside the observers' ``handler_context``;
5. a message cancelled (:mod:`leanmq_async.worker.cancels`) before its start is
   dead-lettered unrun (checked before the limiter is asked; a marker this worker has
   not heard of makes ``lua/defer.lua`` refuse the deferral: dead-lettered too); each
   processor runs in a cancel scope of its own, which a cancel request of the message
   its handler runs cancels (dead-lettered too, reason ``"cancelled"``; the processor
   goes on in a new scope). One scope per processor, not
   per message: an anyio scope costs microseconds, the hot path pays two dict operations;
6. the outcome goes to the :class:`~leanmq_async.worker.settler.Settler`: returned → ack
   (with ``result_ttl``: the value is stored with the ack, :mod:`leanmq_async.results`);
   ``Reject`` → dead-letter; ``Retry`` or any other exception → retry after the backoff,
   or dead-letter (with a traceback summary) once ``max_retries`` are spent.

The slot is freed when the message is settled (or skipped).
"""

from __future__ import annotations

import linecache
import math
import time
import traceback
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio

from leanmq_async import results  # results (issue 17)
from leanmq_async.envelope import decode_payload
from leanmq_async.exceptions import LeanMQError, MessageDecodeError, Reject, Retry
from leanmq_async.rate_limit import _GRANTED  # rate limits (issue 16)
from leanmq_async.reading import FOREIGN, expired, to_message, triage_entry
from leanmq_async.worker.backoff import retry_delay
from leanmq_async.worker.cancels import Cancels
from leanmq_async.worker.limiter import Limiter

if TYPE_CHECKING:
    from leanmq_async.envelope import DecodedEntry
    from leanmq_async.worker.handler import Handler
    from leanmq_async.worker.leases import LeaseKeeper
    from leanmq_async.worker.observer import Notifier
    from leanmq_async.worker.settler import Settler
    from leanmq_async.worker.state import RunnerState, Work

__all__ = ["Executor", "traceback_summary"]

_TRACEBACK_LIMIT = 4000
CANCELLED_REASON = "cancelled"


class Executor:
    """The processors of one runner; see the module docstring."""

    def __init__(
        self,
        handler: Handler,
        state: RunnerState,
        settler: Settler,
        leases: LeaseKeeper,
        notifier: Notifier,
    ) -> None:
        self.handler = handler
        self.queue = handler.queue
        self.store = handler.queue.mq.store
        self.group = handler.group
        self.max_size = handler.queue.mq.codec.max_message_size
        # A message waiting longer than this between its read and its start (a blocked
        # event loop) has its lease confirmed first: another worker may have taken it.
        self.confirm_after = handler.options.visibility_timeout / 2
        self.state = state
        self.stats = state.stats
        self.log = state.log
        self.debug = state.debug
        self.settler = settler
        self.leases = leases
        self.notifier = notifier
        # Without observers (or debug logging) the hot path reads no clock.
        self.timed = self.debug or bool(notifier.observers)
        self.cancels = Cancels()
        self._cancelled_exc: type[BaseException] = BaseException  # set by run()
        limit = handler.options.rate_limit  # rate limits (issue 16)
        self.limiter = None if limit is None else Limiter(handler, limit, settler, state)

    async def run(self) -> None:
        """One processor: handle work items until the work queue is closed and empty."""
        self._cancelled_exc = anyio.get_cancelled_exc_class()
        while await self._run_scoped():
            pass

    async def _run_scoped(self) -> bool:
        """Handle work items in a cancel scope of this processor; True when a cancel
        request used it up (go on in a new one), False when the work queue is closed."""
        work_queue, in_flight, slots = self.state.work, self.state.in_flight, self.state.slots
        with anyio.CancelScope() as scope:
            while (work := await work_queue.get()) is not None:
                try:
                    if time.monotonic() - work.fetched > self.confirm_after and (
                        not await self.leases.still_held(work)
                    ):
                        continue
                    await self.process(work, scope)
                finally:
                    in_flight.discard(work.sid)
                    slots.release(1)
                if scope.cancel_called:
                    return True  # the handler finished before the request reached it
            return False
        return True

    async def process(self, work: Work, scope: anyio.CancelScope | None = None) -> None:
        """Handle one work item from its triage to its settling."""
        handler, settler = self.handler, self.settler
        sid = work.sid.decode()
        if work.deliveries > handler.options.max_deliveries:
            await settler.dead_letter(
                sid,
                f"delivered {work.deliveries} times without completing (max_deliveries="
                f"{handler.options.max_deliveries}): it may crash the worker",
                "MaxDeliveriesExceeded",
                # results (issue 17): the message's id, so that its waiters learn why
                message_id=results.message_id_of(handler, work.fields, self.max_size),
            )
            return
        verdict, entry = triage_entry(work.fields, self.group, self.max_size)
        if isinstance(entry, str):
            await settler.dead_letter(sid, entry, "MessageDecodeError")
            return
        if verdict is FOREIGN:
            settler.ack(work.sid)
            return
        # The local clock estimate pre-filters (read only for entries with a TTL); Redis
        # confirms, so a stepped host clock is harmless.
        expires = entry.expires_at_ms
        if (
            expires is not None
            and expired(entry, await self._redis_now_ms())
            and await settler.expire(sid, expires, entry.message_id)
        ):
            return
        try:
            payload = decode_payload(entry, handler.payload_type)
        except MessageDecodeError as exc:
            await settler.dead_letter(
                sid,
                str(exc),
                "MessageDecodeError",
                attempts=entry.attempts,
                message_id=entry.message_id,
            )
            return
        # -- rate limits (issue 16): start now, or wait deferred (see worker/limiter.py) --
        if self.limiter is not None:
            if work.sid in self.cancels.marked:  # cancelled: never asks for a start
                await self._cancelled(sid, entry, entry.attempts, started=False)
                return
            granted = await self.limiter.admit(work, sid, entry, payload)
            if granted is None:
                return
            token = _GRANTED.set(granted / 1000)
            try:
                await self._call(work, sid, entry, payload, scope)
            finally:
                _GRANTED.reset(token)
            return
        # -- end rate limits --
        await self._call(work, sid, entry, payload, scope)

    async def _redis_now_ms(self) -> float:
        """The Redis clock estimate; the last one when Redis cannot re-measure it now.

        Re-measuring (every minute) needs Redis: during an outage the estimate goes on
        from the last measurement instead of failing the processor (and the worker).
        """
        try:
            return await self.store.redis_now_ms()
        except LeanMQError:
            return await self.store.redis_now_ms(max_age=math.inf)

    async def _call(
        self,
        work: Work,
        sid: str,
        entry: DecodedEntry,
        payload: Any,
        scope: anyio.CancelScope | None = None,
    ) -> None:
        """Call the handler and settle by its outcome.

        While the handler runs, ``scope`` (its processor's) is what a cancel request of
        this message cancels.
        """
        handler, settler, notifier = self.handler, self.settler, self.notifier
        attempt = entry.attempts + 1
        arg = (
            to_message(sid, entry, payload, self.queue.name, work.deliveries)
            if handler.wants_message
            else payload
        )
        timeout = handler.options.timeout
        debug = self.debug
        cancels = self.cancels
        if work.sid in cancels.marked:  # cancelled before its start: never runs
            await self._cancelled(sid, entry, entry.attempts, started=False)
            return
        if debug:
            self.log.debug("received", message_id=entry.message_id, id=sid, attempt=attempt)
        started = anyio.current_time() if self.timed or timeout is not None else 0.0
        running = cancels.running
        if scope is not None:
            running[work.sid] = scope
        try:
            try:
                if notifier.contexts:
                    value = await self._call_observed(arg, sid, entry, payload, work.deliveries)
                elif timeout is None:
                    value = await handler.func(arg)
                else:
                    with anyio.fail_after(timeout):
                        value = await handler.func(arg)
            finally:
                running.pop(work.sid, None)
        except Reject as exc:
            self.stats.failed += 1
            if notifier.observers:
                notifier.notify("on_failed", entry.message_id, exc, anyio.current_time() - started)
            await settler.dead_letter(
                sid, exc.reason, "Reject", attempts=attempt, message_id=entry.message_id
            )
        except Retry as exc:
            self.stats.failed += 1
            if notifier.observers:
                notifier.notify("on_failed", entry.message_id, exc, anyio.current_time() - started)
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
            if notifier.observers:
                notifier.notify("on_failed", entry.message_id, exc, anyio.current_time() - started)
            await self._fail(sid, entry, attempt, exc, None)
        except BaseException as exc:
            # A cancel request of this message (not a shutdown): settle, then let the
            # cancellation reach the processor's scope.
            if (
                scope is not None
                and scope.cancel_called
                and isinstance(exc, self._cancelled_exc)
                and work.sid in cancels.marked
            ):
                self.stats.failed += 1
                await self._cancelled(sid, entry, attempt, started=True)
            raise
        else:
            # -- results (issue 17): a result handler stores its value with the ack --
            ttl = handler.options.result_ttl
            if ttl is None:
                settler.ack(work.sid)
            elif not await results.store_result(
                settler, sid, entry.message_id, value, attempt, ttl
            ):
                return  # unencodable: dead-lettered instead
            # -- end results --
            self.stats.handled += 1
            if notifier.observers:
                notifier.notify("on_handled", entry.message_id, anyio.current_time() - started)
            if debug:
                self.log.debug(
                    "handled",
                    message_id=entry.message_id,
                    id=sid,
                    attempt=attempt,
                    duration=anyio.current_time() - started,
                )

    async def _cancelled(self, sid: str, entry: DecodedEntry, attempts: int, started: bool) -> None:
        """Dead-letter a cancelled message (reason ``"cancelled"``), never retried."""
        self.log.info("cancelled", id=sid, message_id=entry.message_id, started=started)
        await self.settler.dead_letter(
            sid, CANCELLED_REASON, "Cancelled", attempts=attempts, message_id=entry.message_id
        )

    async def _call_observed(
        self, arg: Any, sid: str, entry: DecodedEntry, payload: Any, deliveries: int
    ) -> Any:
        """Call the handler inside the observers' ``handler_context`` (tracing spans)."""
        handler = self.handler
        message = (
            arg
            if handler.wants_message
            else to_message(sid, entry, payload, self.queue.name, deliveries)
        )
        async with AsyncExitStack() as stack:
            await self.notifier.enter_contexts(stack, message)
            timeout = handler.options.timeout
            if timeout is None:
                return await handler.func(arg)
            with anyio.fail_after(timeout):
                return await handler.func(arg)

    async def _fail(
        self,
        sid: str,
        entry: DecodedEntry,
        attempt: int,
        exc: BaseException,
        delay: float | None,
    ) -> None:
        """Retry a failed message after its backoff, or dead-letter it when spent."""
        handler = self.handler
        if attempt <= handler.max_retries:
            if delay is None:
                delay = retry_delay(handler.options.backoff, attempt, self.log)
            await self.settler.retry(sid, entry.message_id, attempt, delay, exc)
            return
        error_type = type(exc).__name__
        await self.settler.dead_letter(
            sid,
            f"failed after {attempt} attempt(s): {error_type}: {exc}",
            error_type,
            traceback_summary(exc),
            attempt,
            entry.message_id,
        )


def traceback_summary(exc: BaseException) -> str:
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
