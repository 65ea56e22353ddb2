"""Settling steps that many processors ask for at once share one round trip.

When handlers fail together (a bad deploy, a dependency down), every failure needs a
script call (retry or dead-letter). One call each would cost a round trip each and grow
the connection pool by one connection per concurrent failure. Instead the first
processor to ask becomes the *leader*: it lets the processors failing right now add
their calls, sends them as one pipeline and hands each its own reply; it sends further
batches until its own call is answered, then hands the lead to the oldest waiting call.

No task of its own: a leader is a processor already inside its shielded, time-bounded
settling step. A leader that stops early (its ``settle_timeout`` ran out) fails the calls
of its unanswered batch with :class:`LeanMQConnectionError`, so their processors retry,
and still hands the lead on.
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.lowlevel

from leanmq_async.exceptions import LeanMQConnectionError, LeanMQError
from leanmq_async.store import SettleCall, Store

__all__ = ["SettleBatcher"]

# Calls per pipeline: large enough that a burst of failures costs a few round trips,
# small enough that one reply does not hold the leader long.
_MAX_BATCH = 200


class _Waiting:
    __slots__ = ("call", "done", "result")

    def __init__(self, call: SettleCall) -> None:
        self.call = call
        self.done = anyio.Event()
        self.result: int | LeanMQError | None = None


_LEAD = LeanMQConnectionError("your turn to lead")  # a marker, never raised


class SettleBatcher:
    """Batches one runner's settling script calls; see the module docstring."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: list[_Waiting] = []
        self._leading = False

    async def call(self, call: SettleCall) -> int:
        """Run ``call`` in the next batch; its reply, or its error raised here."""
        waiting = _Waiting(call)
        self._queue.append(waiting)
        try:
            while True:
                if not self._leading:
                    await self._lead(waiting)
                await waiting.done.wait()
                if waiting.result is not _LEAD:
                    break
                waiting.result = None
                waiting.done = anyio.Event()
        except BaseException:
            # Given up (settle_timeout): leave the line, and pass on a lead handed to us.
            with contextlib.suppress(ValueError):
                self._queue.remove(waiting)
            if not self._leading:
                self._hand_on()
            raise
        result = waiting.result
        if isinstance(result, LeanMQError):
            raise result
        assert result is not None
        return result

    async def _lead(self, own: _Waiting) -> None:
        self._leading = True
        batch: list[_Waiting] = []
        try:
            # Let the processors that are failing right now add their calls first.
            await anyio.lowlevel.checkpoint()
            while not own.done.is_set() and self._queue:
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                try:
                    results = await self._store.settle_many([w.call for w in batch])
                except LeanMQError as exc:
                    results = [exc] * len(batch)
                for waiting, result in zip(batch, results, strict=True):
                    waiting.result = result
                    waiting.done.set()
                batch = []
        finally:
            self._leading = False
            gave_up = LeanMQConnectionError("settle batch abandoned by its leader: retry")
            for waiting in batch:
                if not waiting.done.is_set():
                    waiting.result = gave_up
                    waiting.done.set()
            with contextlib.suppress(ValueError):
                self._queue.remove(own)
            self._hand_on()

    def _hand_on(self) -> None:
        """Wake the oldest waiting call to lead the next batch."""
        if self._queue:
            successor = self._queue[0]
            if not successor.done.is_set():
                successor.result = _LEAD
                successor.done.set()
