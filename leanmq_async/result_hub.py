"""The waiting side of handler results: :class:`ResultHub`, one per client.

Every waiter of a process shares one pub/sub connection, subscribed to the channel on
which workers announce stored results (see :mod:`leanmq_async.results`). There is no
background task: the first waiter reads the subscription for everyone and, when it
leaves, hands the reading on to another waiter, so nothing outlives the calls. A waiter
registers first, then checks the stored result once the subscription is confirmed (a
result stored before is found by that check, one stored after is announced); the checks
are coalesced into one pipelined GET round trip. A broken subscription is re-made and
every waiter checked again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import redis.exceptions as redis_errors

from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import LeanMQConnectionError, LeanMQError
from leanmq_async.keys import results_channel

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = ["ResultHub"]

# A new reader drops a subscription idle this long instead of reading its backlog.
_IDLE_RESET = 30.0
# The reader's longest socket wait: how soon it notices a result found by another check.
_READ_CHUNK = 0.5
# A subscription not confirmed this soon is given up (and tried again).
_CONFIRM_WITHIN = 10.0


class _Waiter:
    __slots__ = ("event", "fresh", "keys", "record")

    def __init__(self, keys: Sequence[str], fresh: bool) -> None:
        self.keys = tuple(keys)
        # Registered before its message was sent (call()): no announcement for its keys
        # can be older than the waiter.
        self.fresh = fresh
        self.record: bytes | None = None
        self.event = anyio.Event()


class ResultHub:
    """The waiters of one client and their shared subscription (see the module docstring)."""

    def __init__(self, mq: LeanMQ) -> None:
        self._mq = mq
        self.channel = results_channel(mq.prefix)
        self._waiters: dict[str, list[_Waiter]] = {}
        self._all: dict[_Waiter, None] = {}  # in arrival order
        self._unchecked: set[str] = set()
        self._pubsub: Any = None
        self._ready = anyio.Event()
        self._sub_lock = anyio.Lock()
        self._reading = False
        self._stale = False  # announcements may wait unread (nobody read since)
        self._checking = False
        self._idle_since = time.monotonic()
        self._closed = False
        self._lead_scope: anyio.CancelScope | None = None
        self._lead_done = anyio.Event()

    @property
    def waiting(self) -> int:
        """How many waiters wait (tests and metrics)."""
        return len(self._all)

    async def aclose(self) -> None:
        """Close the subscription (with the client); waiters still waiting raise."""
        self._closed = True
        scope, done = self._lead_scope, self._lead_done
        if scope is not None:  # let the reader stop reading and drop the subscription
            scope.cancel()
            with anyio.move_on_after(5):
                await done.wait()
        await self._reset()
        for waiter in self._all:
            waiter.event.set()

    async def wait(self, keys: Sequence[str], limit: float | None, *, check: bool = True) -> bytes:
        """The record stored under any of ``keys``; :class:`TimeoutError` after ``limit`` s.

        ``check=False``: the caller made sure the subscription was confirmed before the
        result could be stored (:meth:`subscribed`), so no GET is needed.
        """
        waiter = self.register(keys, check=check)
        try:
            return await self.wait_for(waiter, limit)
        finally:
            self.unregister(waiter)

    def register(self, keys: Sequence[str], *, check: bool = True) -> _Waiter:
        waiter = _Waiter(keys, fresh=not check)
        self._all[waiter] = None
        for key in waiter.keys:
            self._waiters.setdefault(key, []).append(waiter)
        if check:
            self._unchecked.update(waiter.keys)
        return waiter

    def unregister(self, waiter: _Waiter) -> None:
        self._all.pop(waiter, None)
        for key in waiter.keys:
            others = self._waiters.get(key)
            if others is not None and waiter in others:
                others.remove(waiter)
                if not others:
                    del self._waiters[key]
                    self._unchecked.discard(key)
        if not self._all:
            self._idle_since = time.monotonic()

    async def subscribed(self, limit: float | None) -> None:
        """Make sure the subscription is confirmed (subscribing if needed)."""
        with anyio.fail_after(limit):
            while not self._ready.is_set():
                await self._subscribe()

    async def wait_for(self, waiter: _Waiter, limit: float | None) -> bytes:
        """Wait (reading for everyone when nobody does) until ``waiter`` has its record."""
        deadline = anyio.current_time() + (limit if limit is not None else float("inf"))
        pause = 0.05
        while waiter.record is None:
            if self._closed:
                raise LeanMQError("the client was closed while waiting for a result")
            left = deadline - anyio.current_time()
            if left <= 0:
                raise TimeoutError("no result within the timeout")
            try:
                if not self._reading:
                    await self._lead(waiter, deadline)
                elif self._ready.is_set() and self._unchecked and not self._checking:
                    await self._check()
                else:
                    with anyio.move_on_after(left):
                        await waiter.event.wait()
                    if waiter.record is None:
                        waiter.event = anyio.Event()
                pause = 0.05
            except LeanMQConnectionError:
                # Redis unreachable: try again (the reader re-subscribes) until the deadline.
                with anyio.move_on_after(min(pause, max(0.0, deadline - anyio.current_time()))):
                    await anyio.sleep_forever()
                pause = min(1.0, pause * 2)
        return waiter.record

    # -- the subscription ------------------------------------------------------------

    async def _subscribe(self) -> None:
        async with self._sub_lock:
            if self._ready.is_set():
                return
            pubsub: Any = self._mq.redis.pubsub()
            confirmed = False
            try:
                with translate_errors("SUBSCRIBE results"):
                    await pubsub.subscribe(self.channel)
                    with anyio.move_on_after(_CONFIRM_WITHIN):
                        while not confirmed:
                            message = await pubsub.get_message(timeout=_READ_CHUNK)
                            confirmed = message is not None and message["type"] == "subscribe"
                if not confirmed:
                    raise LeanMQConnectionError(
                        f"SUBSCRIBE results: not confirmed within {_CONFIRM_WITHIN}s"
                    )
            finally:
                if not confirmed:
                    with anyio.CancelScope(shield=True):
                        await pubsub.aclose()
            self._pubsub = pubsub
            # What was stored while nobody listened is found by a check of every key.
            self._unchecked.update(self._waiters)
            self._ready.set()

    async def _reset(self) -> None:
        """Drop the subscription (broken, abandoned mid-read, or idle too long)."""
        pubsub, self._pubsub = self._pubsub, None
        if self._ready.is_set():
            self._ready = anyio.Event()
        if pubsub is not None:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    await pubsub.aclose()

    async def _lead(self, own: _Waiter, deadline: float) -> None:
        """Read the subscription for every waiter until ``own`` has its result."""
        self._reading = True
        self._lead_done = done = anyio.Event()
        clean = False
        try:
            # aclose() cancels this scope: a read is never cut short by closing its socket.
            with anyio.CancelScope() as self._lead_scope:
                await self._read_until(own, deadline)
                clean = True
        except LeanMQConnectionError:
            await self._reset()
            clean = True
            raise
        finally:
            self._lead_scope = None
            if not clean:  # cancelled mid-read: the connection may hold half a reply
                await self._reset()
            self._reading = False
            done.set()
            for waiter in self._all:  # hand the reading on
                if waiter is not own and waiter.record is None:
                    waiter.event.set()
                    break
            else:  # nobody reads until the next waiter comes
                self._stale = True

    async def _read_until(self, own: _Waiter, deadline: float) -> None:
        if self._ready.is_set() and self._stale:
            if time.monotonic() - self._idle_since > _IDLE_RESET:
                await self._reset()
            else:
                await self._drain()
        self._stale = False
        while own.record is None and not self._closed:
            left = deadline - anyio.current_time()
            if left <= 0:
                return
            if not self._ready.is_set():
                await self._subscribe()
            if self._unchecked and not self._checking:
                await self._check()
                continue
            with translate_errors("read results"):
                message = await self._pubsub.get_message(timeout=min(left, _READ_CHUNK))
            if message is not None:
                self._dispatch(message)

    async def _drain(self) -> None:
        """Read what was announced while nobody read: only fresh waiters take from it;
        the others' stored results are checked instead.

        Announcements wait in the connection while no waiter reads; a waiter of
        ``get_result`` must not take one older than itself (a result since expired, say,
        or one an earlier run of its message stored): the stored result is what counts.
        """
        with translate_errors("read results"):
            while (message := await self._pubsub.get_message(timeout=0)) is not None:
                self._dispatch(message, fresh_only=True)
        self._unchecked.update(k for w in self._all if not w.fresh for k in w.keys)

    def _dispatch(self, message: dict[str, Any], *, fresh_only: bool = False) -> None:
        kind = message["type"]
        if kind == "subscribe":  # re-subscribed after a reconnect: check everything
            self._unchecked.update(self._waiters)
            return
        if kind != "message":
            return
        data: bytes = message["data"]
        size, _, rest = data.partition(b":")
        try:
            n = int(size)
        except ValueError:
            return
        key = rest[:n].decode(errors="replace")
        if key not in self._waiters:
            return
        record = rest[n:]
        if not record:
            self._unchecked.add(key)
        else:
            self._deliver(key, record, fresh_only=fresh_only)

    def _deliver(self, key: str, record: bytes, *, fresh_only: bool = False) -> None:
        for waiter in self._waiters.get(key, ()):
            if waiter.fresh or not fresh_only:
                waiter.record = record
                waiter.event.set()

    async def _check(self) -> None:
        """GET what the waiters not yet checked may have missed: one round trip."""
        self._checking = True
        keys: list[str] = []
        try:
            while self._unchecked:
                keys = list(self._unchecked)
                self._unchecked.clear()
                with translate_errors("GET results"):
                    async with self._mq.redis.pipeline(transaction=False) as pipe:
                        for key in keys:
                            pipe.get(key)
                        values = await pipe.execute()
                for key, value in zip(keys, values, strict=True):
                    if value:
                        self._deliver(key, value)
                keys = []
        finally:
            self._unchecked.update(k for k in keys if k in self._waiters)
            self._checking = False
