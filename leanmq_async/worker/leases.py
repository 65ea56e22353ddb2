"""Keeping the leases of the messages a runner holds.

A message read or claimed by this consumer is leased to it for ``visibility_timeout``
(its idle time in the pending list): past that, another worker's reclaim scan may take
it. While a message is in flight (queued or running), :class:`LeaseKeeper` extends its
lease every third of it, so a slow handler keeps its message.

A message that waited in the work queue past half its lease before a processor took it
(the event loop was blocked, say) has its lease confirmed first (:meth:`still_held`): if
another worker took it meanwhile, it is skipped rather than run twice.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from leanmq_async.exceptions import LeanMQError
from leanmq_async.priority import by_level

if TYPE_CHECKING:
    from leanmq_async.keys import QueueKeys
    from leanmq_async.store import Store
    from leanmq_async.worker.state import RunnerState, Work

__all__ = ["LeaseKeeper"]

# Most ids one extension call carries.
_EXTEND_BATCH = 1000


class LeaseKeeper:
    """Extends the leases of one runner's messages in flight; see the module docstring."""

    def __init__(
        self,
        store: Store,
        keys: QueueKeys,
        stream: str,
        group: str,
        consumer: str,
        lease_ms: int,
        state: RunnerState,
    ) -> None:
        self.store = store
        self.keys = keys  # the queue's; an entry of a priority level names its level
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.lease_ms = lease_ms
        self.in_flight = state.in_flight
        self.log = state.log
        self.debug = state.debug
        # How extensions are sent (a worker sharing reads sends them in a hub round).
        self.extend = store.extend_leases

    async def run(self) -> None:
        """Every third of the lease, extend the lease of every message in flight."""
        interval = self.lease_ms / 3000
        while True:
            await anyio.sleep(interval)
            held = list(self.in_flight)
            if not held:
                continue
            try:
                lost: list[bytes] = []
                for stream, ids in by_level(self.keys, self.stream, held).items():
                    for i in range(0, len(ids), _EXTEND_BATCH):
                        batch = ids[i : i + _EXTEND_BATCH]
                        lost += await self.extend(stream, self.group, self.consumer, batch)
            except LeanMQError as exc:
                self.log.warning("lease_extend_failed", error=str(exc))
                continue
            if lost:
                self.log.warning("lease_lost", count=len(lost))
            if self.debug:
                self.log.debug("lease_extended", count=len(held) - len(lost))

    async def still_held(self, work: Work) -> bool:
        """Confirm (and extend) the lease of a message read long ago and not started yet.

        It waited past half its lease (the event loop was blocked, say): if another worker
        reclaimed it meanwhile, running it here too would run it twice, so it is skipped.
        """
        try:
            ((stream, ids),) = by_level(self.keys, self.stream, [work.sid]).items()
            lost = await self.extend(stream, self.group, self.consumer, ids)
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
