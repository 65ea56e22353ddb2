"""Cancellation in a worker: the cancel requests a runner knows of, and one listener per worker.

``Queue.cancel`` of a message some group holds pending marks it in Redis (the queue's
``cancelled`` zset, ``lua/cancel.lua``) and announces it on the prefix's cancel channel
(:func:`~leanmq_async.keys.cancel_channel`). Each worker keeps one subscription to that
channel (:class:`CancelListener`, a task of the worker's task group) and hands every
announcement to the :class:`Cancels` of the runners of that queue:

* a handler running the message has its processor's cancel scope cancelled at once
  (only that processor's; it goes on in a new scope), and the executor dead-letters the
  message with reason ``"cancelled"``;
* a message read but not started yet is dead-lettered unrun when its processor takes it:
  the check is a set lookup, no Redis round trip per message;
* a retry of a cancelled message is refused by ``lua/retry.lua`` itself (a failure that
  races the announcement): the settler dead-letters it instead.

After every (re)subscription the listener reads the markers stored in Redis for each
queue it serves (the reconcile), so a cancel announced while it was disconnected is not
missed. Ids are entry names (a priority level's entry ``<stream id>:p<level>``, see
:mod:`leanmq_async.priority`), so equal stream ids of two levels are never confused.
Its whole cost on a message never cancelled is that set lookup and the
processor's scope registered under the message's id while its handler runs (two dict
operations; ``benchmarks/cancel.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import redis.exceptions as redis_errors
from anyio.abc import TaskStatus

from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import LeanMQConnectionError, LeanMQError
from leanmq_async.keys import cancel_channel

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.keys import QueueKeys
    from leanmq_async.worker.runner import HandlerRunner

__all__ = ["CancelListener", "Cancels"]

# A marker learnt is kept this long locally (Redis keeps it a day: queue.CANCEL_MARKER_SECONDS).
_KEEP = 86_400.0
# The listener's longest wait on its socket; and how soon an unconfirmed subscription fails.
_READ_CHUNK = 1.0
_CONFIRM_WITHIN = 10.0


class Cancels:
    """The cancel requests one runner knows of, and the cancel scopes of its handlers."""

    __slots__ = ("marked", "running")

    def __init__(self) -> None:
        # Keyed by entry name, the executor's ``Work.sid``: a stream id, or for a priority
        # level's entry '<stream id>:p<level>' (as cancel.lua marks and announces it).
        self.marked: dict[bytes, float] = {}  # entry name -> when forgotten (monotonic)
        self.running: dict[bytes, anyio.CancelScope] = {}  # entry name -> its processor's scope

    def request(self, sid: bytes) -> bool:
        """Record a cancel of ``sid``; cancel its handler if one runs here (True then)."""
        now = time.monotonic()
        if len(self.marked) >= 10_000:
            self.marked = {s: t for s, t in self.marked.items() if t > now}
        self.marked[sid] = now + _KEEP
        scope = self.running.get(sid)
        if scope is None:
            return False
        scope.cancel()
        return True


class CancelListener:
    """The worker's one subscription to the cancel channel (see the module docstring)."""

    def __init__(self, mq: LeanMQ, runners: Sequence[HandlerRunner]) -> None:
        self.mq = mq
        self.channel = cancel_channel(mq.prefix)
        self.targets: dict[str, list[Cancels]] = {}
        self.keys: dict[str, QueueKeys] = {}
        for runner in runners:
            keys = runner.queue.keys
            self.targets.setdefault(keys.base, []).append(runner.executor.cancels)
            self.keys[keys.base] = keys
        self.log = runners[0].log if runners else None
        self.subscriptions = 0  # (re)subscriptions made (tests count them)
        self._pubsub: Any = None
        self._pubsub_ok = False  # the last subscription worked (retry at once when lost)
        self._task_status: TaskStatus[None] | None = None

    def deliver(self, base: str, sid: bytes) -> None:
        """Hand a cancel of ``sid`` in queue ``base`` to every runner of that queue."""
        for cancels in self.targets.get(base, ()):
            if cancels.request(sid) and self.log is not None:
                self.log.info("cancel_requested", queue=base, id=sid.decode(errors="replace"))

    async def reconcile(self) -> None:
        """Read the markers stored in Redis: cancels announced while nobody listened."""
        for base, keys in self.keys.items():
            for sid in await self.mq.store.cancel_markers(keys):
                self.deliver(base, sid)

    async def disconnect(self) -> None:
        """Drop the subscription (tests: a lost connection); the listener subscribes again."""
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await pubsub.connection.disconnect()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, reconcile, dispatch announcements; again after any lost connection.

        Reports itself started once subscribed (or after a first failure: a worker does
        not wait for its cancel listener).
        """
        self._task_status = task_status
        pause = 0.1
        while True:
            try:
                await self._listen()
            except LeanMQError as exc:
                # Redis away: try again soon. Refused (an ACL user without SUBSCRIBE on
                # the channel): say so now and then; retry.lua still refuses a retry.
                cap = 2.0 if isinstance(exc, LeanMQConnectionError) else 60.0
                if self.log is not None:
                    self.log.warning("cancel_listener_lost", error=str(exc), retry_in=pause)
                self._report_started()
                await anyio.sleep(pause)
                pause = 0.1 if self._pubsub_ok else min(cap, pause * 2)

    def _report_started(self) -> None:
        status, self._task_status = self._task_status, None
        if status is not None:
            status.started()

    async def _listen(self) -> None:
        pubsub: Any = self.mq.redis.pubsub()
        self._pubsub, self._pubsub_ok = pubsub, False
        message: dict[str, Any] | None = None
        try:
            with translate_errors("SUBSCRIBE cancel"):
                await pubsub.subscribe(self.channel)
                with anyio.move_on_after(_CONFIRM_WITHIN):
                    while True:
                        message = await pubsub.get_message(timeout=_READ_CHUNK)
                        if message is not None and message["type"] == "subscribe":
                            break
                if message is None or message["type"] != "subscribe":
                    raise LeanMQConnectionError("SUBSCRIBE cancel: not confirmed")
            await self.reconcile()
            self.subscriptions += 1
            self._pubsub_ok = True
            self._report_started()
            while True:
                with translate_errors("read cancel announcements"):
                    message = await pubsub.get_message(timeout=_READ_CHUNK)
                if message is not None and message["type"] == "message":
                    base, _, sid = message["data"].partition(b" ")
                    self.deliver(base.decode(errors="replace"), sid)
        finally:
            self._pubsub = None
            with (
                anyio.CancelScope(shield=True),
                contextlib.suppress(redis_errors.RedisError, OSError),
            ):
                await pubsub.aclose()
