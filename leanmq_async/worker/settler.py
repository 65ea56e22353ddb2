"""Settling a processed message: ack, retry with backoff, dead-letter or expire.

The last part of a runner's pipeline (see :mod:`leanmq_async.worker.runner`):

* acks are buffered: they ride with the fetch loop's next read (one round trip for both)
  or, if no read comes first, the acker sends them as one XACK after ``LINGER``;
* a retry, a dead-letter move or an expiry is one script call each, batched with the
  calls of other processors settling at the same moment
  (:class:`~leanmq_async.worker.settle_batch.SettleBatcher`).

Every step runs shielded from cancellation and bounded by ``settle_timeout``: it
completes or never starts, and a message whose settling failed simply stays pending for
reclaim. A script refuses to move an entry this consumer no longer holds (``lease_lost``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio

from leanmq_async import results  # results (issue 17)
from leanmq_async.exceptions import LeanMQConnectionError, LeanMQError
from leanmq_async.priority import by_level, split_id
from leanmq_async.worker.settle_batch import SettleBatcher
from leanmq_async.worker.state import LINGER

if TYPE_CHECKING:
    from leanmq_async.store_types import SettleCall
    from leanmq_async.worker.handler import Handler
    from leanmq_async.worker.observer import Notifier
    from leanmq_async.worker.read_hub import ReadHub
    from leanmq_async.worker.state import RunnerState

__all__ = ["Settler"]

T = TypeVar("T")

# A runner sharing reads acks in the hub's rounds: waiting a little longer lets the acks
# of many runners share one round, leaving the rounds to the claims that start handlers.
ACK_LINGER_SHARED = 0.02


class Settler:
    """Settles the messages of one runner; see the module docstring."""

    def __init__(
        self,
        handler: Handler,
        consumer: str,
        settle_timeout: float,
        state: RunnerState,
        notifier: Notifier,
    ) -> None:
        self.queue = queue = handler.queue
        self.store = queue.mq.store
        self.stream = queue.stream
        self.group = handler.group
        self.consumer = consumer
        self.expired_policy = handler.options.expired
        self.result_ttl = handler.options.result_ttl  # results (issue 17)
        self.settle_timeout = settle_timeout
        self.stats = state.stats
        self.log = state.log
        self.notifier = notifier
        self._batcher = SettleBatcher(self.store)
        self._acks: list[bytes] = []
        self._acking: set[bytes] = set()  # acks a read or an XACK under way carries
        self._wakeup = anyio.Event()
        # How an XACK of its own is sent (a worker sharing reads sends it in a hub round).
        self.send_acks: Callable[[str, str, list[bytes]], Awaitable[int]] = self.store.ack
        self.ack_linger = LINGER  # longer when shared: acks of many runners share a round
        # Called after a retry is scheduled (the worker wakes its delayed-message mover).
        self.on_scheduled: Callable[[str], None] = lambda stream: None

    def share(self, hub: ReadHub) -> None:
        """Settle through a worker's shared reads: acks in its rounds, scripts in its one
        settle batcher (a worker with many queues then holds few connections)."""
        self.send_acks = hub.ack
        self.ack_linger = ACK_LINGER_SHARED
        self._batcher = hub.settle_batcher

    # -- acks ----------------------------------------------------------------------------

    def ack(self, sid: bytes) -> None:
        """Buffer the ack of a handled message (sent with the next read or XACK)."""
        self._acks.append(sid)
        self._wakeup.set()

    @property
    def acks_buffered(self) -> bool:
        return bool(self._acks)

    def unacked(self) -> set[bytes]:
        """Handled messages whose ack is buffered or under way."""
        return {*self._acks, *self._acking}

    def wake(self) -> None:
        """Have the acker send the buffered acks now."""
        self._wakeup.set()

    def take_acks(self) -> list[bytes]:
        """The buffered acks, for a read to carry; :meth:`return_acks` once it ended."""
        acks, self._acks = self._acks, []
        self._acking.update(acks)
        return acks

    def return_acks(self, acks: list[bytes], *, sent: bool) -> None:
        """The read carrying ``acks`` ended; unless it surely ran, they are kept.

        Unknown whether the XACK ran (XACK again is harmless): they are buffered again.
        """
        self._acking.difference_update(acks)
        if not sent and acks:
            self._acks = acks + self._acks

    async def run_acker(self) -> None:
        """Send buffered acks ``LINGER`` after the first one, one batch at a time."""
        while True:
            await self._wakeup.wait()
            # Let acks of messages finishing right now join this XACK.
            await anyio.sleep(self.ack_linger)
            self._wakeup = anyio.Event()
            await self.flush_acks(drain=False)

    async def flush_acks(self, *, drain: bool = True) -> None:
        """XACK what is buffered, shielded; on a broken connection keep and retry.

        ``drain=False`` (the acker) sends one batch: acks arriving meanwhile wait for the
        next linger, so they are coalesced instead of sent a few at a time.
        """
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settle_timeout):
            pause = 0.05
            while self._acks:
                batch, self._acks = self._acks, []
                self._acking.update(batch)
                try:
                    for stream, ids in by_level(self.queue.keys, self.stream, batch).items():
                        await self.send_acks(stream, self.group, ids)
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

    # -- scripts -------------------------------------------------------------------------

    async def retry(
        self, sid: str, message_id: str, attempt: int, seconds: float, error: BaseException
    ) -> None:
        """Schedule retry ``attempt + 1`` of a failed message in ``seconds``.

        A retry keeps its priority: it is scheduled in (and moved back to) its level's keys.
        """
        raw, level = split_id(sid)
        call = self.store.retry_call(
            self.queue.keys.at(level), self.group, self.consumer, raw, int(seconds * 1000), attempt
        )
        result = await self._settle(lambda: self._batcher.call(call))
        if result == -1:
            self.log.warning("lease_lost", id=sid, message_id=message_id)
        elif result == 2:
            # Cancelled (lua/cancel.lua) while its handler failed: never retried.
            await self.dead_letter(sid, "cancelled", "Cancelled", "", attempt, message_id)
        elif result == 0:
            # Expiry and trimming never touch a pending entry: this one was deleted
            # under us by a user call (delete_messages, purge). Counted, not hidden.
            self.stats.lost += 1
            self.log.error(
                "retry_skipped",
                id=sid,
                message_id=message_id,
                reason="entry deleted from the stream while handled: it cannot be retried",
            )
        elif result is not None:
            self.stats.retried += 1
            if self.notifier.observers:
                self.notifier.notify("on_retried", message_id, attempt, seconds)
            if seconds > 0:
                self.on_scheduled(self.stream)
            self.log.info(
                "retried",
                id=sid,
                message_id=message_id,
                attempt=attempt,
                delay=round(seconds, 3),
                error_type=type(error).__name__,
                error=str(error),
            )

    async def dead_letter(
        self,
        sid: str,
        reason: str,
        error_type: str,
        details: str = "",
        attempts: int = 0,
        message_id: str = "",
    ) -> int | None:
        """Move the entry to the DLQ if this consumer still holds it; 1 when moved."""
        raw, level = split_id(sid)
        call = self.store.dead_letter_call(
            self.queue.keys.at(level),
            self.group,
            self.consumer,
            self.queue.name,
            (raw, reason, error_type, details, attempts),
        )
        # -- results (issue 17): a result handler's waiters learn the DLQ reason --
        if self.result_ttl is not None and message_id:
            failure = (message_id, reason, error_type, attempts)
            moved = await self._settle(
                results.dead_letter_step(self, call, self.result_ttl, failure)
            )
        else:  # -- end results --
            moved = await self.run_call(call)
        if moved:
            self.stats.dead_lettered += 1
            if self.notifier.observers:
                self.notifier.notify("on_dead_lettered", message_id, reason, error_type)
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

    async def expire(self, sid: str, expires_at_ms: int, message_id: str = "") -> bool:
        """Settle an entry the runner thinks expired, if the Redis clock agrees.

        One script (``lua/expire_read.lua``) checks ``x`` against Redis
        TIME and only then acks it (``expired="drop"``) or dead-letters it for this group
        (``"dlq"``). False when Redis says it is still live: the caller handles it.
        """
        policy = self.expired_policy
        raw, level = split_id(sid)
        keys = self.queue.keys.at(level)
        call = self.store.expire_read_call(
            keys, self.group, self.consumer, self.queue.name, policy, raw, expires_at_ms
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
                if self.notifier.observers:
                    self.notifier.notify("on_dead_lettered", message_id, "expired", "Expired")
            else:
                self.log.info("expired", id=sid)
            if self.notifier.observers:
                self.notifier.notify("on_expired", message_id)
        elif result == -1:
            self.log.warning("lease_lost", id=sid, message_id=message_id)
        return True

    async def run_call(self, call: SettleCall) -> int | None:
        """Run one script ``call`` in this runner's settle batches (see :meth:`_settle`)."""
        return await self._settle(lambda: self._batcher.call(call))

    async def _settle(self, step: Callable[[], Awaitable[T]]) -> T | None:
        """Run a settling step shielded from cancellation, retrying connection errors.

        Gives up after ``settle_timeout``: the message then stays pending and is reclaimed.
        """
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settle_timeout):
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
