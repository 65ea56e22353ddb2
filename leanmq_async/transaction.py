"""Atomic multi-message sends: ``async with mq.transaction() as tx``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from leanmq_async.cluster import NotReplicatedError, check_one_slot
from leanmq_async.exceptions import (
    LeanMQConnectionError,
    LeanMQError,
    SendNotWrittenError,
    TransactionError,
    TransactionNotWrittenError,
    TransactionOutcomeUnknownError,
)
from leanmq_async.store import SendOp

if TYPE_CHECKING:
    from leanmq_async.cluster import Durability
    from leanmq_async.queue import Queue
    from leanmq_async.store import Store

__all__ = ["Transaction"]


class Transaction:
    """Collects sends and writes them all at once when the ``async with`` block exits.

    Every send of the block, its TTL bookkeeping and delays included, is written by a
    single script that checks every key first: all of it is written, or none of it. If
    the block raises, nothing is written. ``message_ids`` holds the producer ids at once;
    ``stream_ids`` holds the stream ids after commit.

    On Redis Cluster the script runs in one hash slot: adding a send to a queue of
    another slot than the first send's raises :class:`ConfigurationError` at once.
    With ``durability``, :class:`~leanmq_async.cluster.NotReplicatedError` from
    :meth:`commit` means it *was* written, but not confirmed by enough replicas.
    """

    def __init__(self, store: Store, *, durability: Durability | None = None) -> None:
        self._store = store
        self._durability = durability
        self._ops: list[SendOp] = []
        self.message_ids: list[str] = []
        self.stream_ids: list[str] = []
        self.committed = False

    def __repr__(self) -> str:
        state = "committed" if self.committed else "open"
        return f"<Transaction {state} sends={len(self._ops)}>"

    def send_message(
        self,
        queue: Queue,
        data: Any,
        message_id: str | None = None,
        ttl: float | None = None,
        *,
        delay: float | None = None,
        headers: Mapping[str, str] | None = None,
        dedup_window: float | None = None,
        priority: int | str | None = None,
    ) -> str:
        """Add a send to the transaction; return the message id (the producer's id).

        An explicit ``message_id`` is deduplicated like ``Queue.send_message``'s: a
        duplicate writes nothing and its stream id is the first send's. ``priority``: the
        message's level, as ``Queue.send_message``'s.
        """
        if self.committed:
            raise TransactionError("this transaction is already committed; start a new one")
        op, mid = queue._send_op(data, message_id, ttl, delay, headers, dedup_window, priority)
        if self._store.cluster and self._ops:
            check_one_slot([self._ops[0], op])
        self._ops.append(op)
        self.message_ids.append(mid)
        return mid

    async def commit(self) -> list[str]:
        """Write every collected send atomically; return their stream ids."""
        if self.committed:
            raise TransactionError("this transaction is already committed")
        self.committed = True
        if not self._ops:
            return []
        try:
            self.stream_ids = await self._store.send(self._ops, self._durability)
        except NotReplicatedError as exc:
            self.stream_ids = exc.stream_ids  # written whole, replication not confirmed
            raise
        except SendNotWrittenError as exc:
            raise TransactionNotWrittenError(
                f"transaction not committed, nothing was written: {exc}"
            ) from exc
        except LeanMQConnectionError as exc:
            raise TransactionOutcomeUnknownError(
                f"transaction outcome unknown: the connection broke during commit ({exc}); "
                "it was written whole or not at all. Committing again is safe when every "
                "send has an explicit message_id"
            ) from exc
        except LeanMQError as exc:
            raise TransactionError(
                f"transaction not committed, nothing was written: {exc}"
            ) from exc
        return self.stream_ids
