"""Partitioned queues: one logical queue stored as N ordinary queues, to spread a cluster.

Every key of one queue shares the hash tag ``{name}``, so one queue lives in one slot,
on one primary: a single hot queue cannot use more than one shard of a Redis Cluster.
``mq.queue("orders", partitions=6)`` returns a :class:`PartitionedQueue` stored as six
ordinary queues ``orders#0`` … ``orders#5``, whose tags hash to different slots (and
so, on a cluster, to different primaries). Each partition is a normal queue with its
own dead-letter queue: retries, dead-lettering, TTLs, delays and reclaim work per
partition through the usual machinery, and the ops tools list the partitions by name.

Routing:

* with ``key=`` a message goes to partition ``zlib.crc32(key) % N`` (stable across
  processes and restarts), so messages with the same key stay in order *within their
  partition* (one partition is one stream). Changing N moves keys to other partitions:
  choose it once (asking again for the same name with another N raises);
* without a key, a send with an explicit ``message_id`` goes to the partition of its
  message id (so a retry finds the first send's dedup record: see
  :mod:`leanmq_async.idempotency`; with a key, retry with the same key); other sends are
  spread round-robin over the partitions (per client).

``send_messages`` groups the messages by partition and writes each group with one
script call, the groups concurrently: it is atomic **per partition only** (one group
may be written while another fails; then :class:`~leanmq_async.PartialSendError` says
which items were written). Use one ``key`` for all of them (one partition) when the
batch must be all-or-nothing.

``@orders.handler(...)`` registers the same function on every partition with the same
options. ``concurrency`` stays per partition: a worker process runs one fetch loop per
partition, each with up to ``concurrency`` messages in flight, so a process may handle up
to ``N * concurrency`` messages at once (pass ``concurrency=ceil(total / N)`` for a
total budget, or cap the worker with ``concurrency=``).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio

from leanmq_async.cluster import Durability, NotReplicatedError, check_wait_support
from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import ConfigurationError, LeanMQError, PartialSendError
from leanmq_async.idempotency import per_item_ids
from leanmq_async.keys import validate_queue_name
from leanmq_async.message import CancelOutcome, QueueInfo
from leanmq_async.queue_read import info_from
from leanmq_async.validation import check_ttl_and_delay

if TYPE_CHECKING:
    from typing import Unpack

    from leanmq_async.client import LeanMQ
    from leanmq_async.queue import Queue
    from leanmq_async.registration import HandlerFunc, HandlerKwargs

__all__ = ["PARTITION_SEPARATOR", "PartitionedQueue", "partition_index"]

PARTITION_SEPARATOR = "#"
F = TypeVar("F", bound="HandlerFunc")


def partition_index(key: str | bytes, partitions: int) -> int:
    """The partition of ``key``: ``zlib.crc32(key) % partitions`` (str keys as UTF-8)."""
    if isinstance(key, str):
        raw = key.encode()
    elif isinstance(key, bytes | bytearray):
        raw = bytes(key)
    else:
        raise ConfigurationError(f"a partition key must be str or bytes, got {key!r}")
    return zlib.crc32(raw) % partitions


class PartitionedQueue:
    """One logical queue stored as ``partitions`` ordinary queues ``<name>#<i>``.

    Obtain it with ``mq.queue(name, partitions=N)`` (no I/O). See
    :mod:`leanmq_async.partition` for routing, atomicity and concurrency.
    """

    def __init__(self, mq: LeanMQ, name: str, partitions: int) -> None:
        validate_queue_name(name)
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ConfigurationError(f"partitions must be an integer >= 1, got {partitions!r}")
        self._mq = mq
        self.name = name
        names = [f"{name}{PARTITION_SEPARATOR}{i}" for i in range(partitions)]
        for part in names:
            validate_queue_name(part)
        self._partitions = tuple(mq._queue_object(part, False) for part in names)
        self._round_robin = itertools.count()

    def __repr__(self) -> str:
        return f"<PartitionedQueue {self.name!r} partitions={len(self._partitions)}>"

    def __len__(self) -> int:
        return len(self._partitions)

    @property
    def mq(self) -> LeanMQ:
        """The client this queue belongs to."""
        return self._mq

    @property
    def partitions(self) -> tuple[Queue, ...]:
        """The partition queues, in index order (``<name>#0`` first)."""
        return self._partitions

    def partition_for(self, key: str | bytes) -> Queue:
        """The partition a message with ``key`` goes to (stable across processes)."""
        return self._partitions[partition_index(key, len(self._partitions))]

    async def _concurrently(self, jobs: Sequence[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        """Run ``jobs`` in a task group (one inline when there is only one)."""
        if len(jobs) == 1:
            await jobs[0]()
            return
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(job)

    def _next(self) -> Queue:
        return self._partitions[next(self._round_robin) % len(self._partitions)]

    def dead_letter_queues(self) -> list[Queue]:
        """The dead-letter queue of every partition (no I/O)."""
        return [p.dead_letter_queue() for p in self._partitions]

    # -- setup ---------------------------------------------------------------------------

    async def create(self) -> list[tuple[Queue, Queue]]:
        """Create every partition and its DLQ (idempotent); return ``(queue, dlq)`` pairs."""
        pairs: list[tuple[Queue, Queue] | None] = [None] * len(self._partitions)

        async def create_one(i: int) -> None:
            pairs[i] = await self._mq.create_queue_pair(self._partitions[i].name)

        await self._concurrently([partial(create_one, i) for i in range(len(self._partitions))])
        return [p for p in pairs if p is not None]

    # -- sending -------------------------------------------------------------------------

    async def send_message(
        self,
        data: Any,
        *,
        key: str | bytes | None = None,
        message_id: str | None = None,
        ttl: float | None = None,
        delay: float | None = None,
        headers: Mapping[str, str] | None = None,
        durability: Durability | None = None,
        dedup_window: float | None = None,
        priority: int | str | None = None,
    ) -> str:
        """Send one message to ``key``'s partition (without key: ``message_id``'s, else
        round-robin); return its id. ``priority``: its level in that partition.

        The id is the partition stream's id (the schedule handle when ``delay`` is given).
        ``durability``: wait for replicas like this for this call (default: the client's).
        ``message_id`` is deduplicated in its partition (``dedup_window``: see
        ``Queue.send_message``).
        """
        queue = self._route(key, message_id)
        return await queue.send_message(
            data,
            message_id,
            ttl,
            delay=delay,
            headers=headers,
            durability=durability,
            dedup_window=dedup_window,
            priority=priority,
        )

    def _route(self, key: str | bytes | None, message_id: str | None) -> Queue:
        if key is not None:
            return self.partition_for(key)
        if isinstance(message_id, str) and message_id:
            return self.partition_for(message_id)  # a retry goes where the first send went
        return self._next()

    # -- results (issue 17; logic in leanmq_async/results.py) ------------------------------

    async def call(
        self,
        data: Any,
        *,
        key: str | bytes | None = None,
        timeout: float | None = 30.0,  # noqa: ASYNC109 - the result's deadline (API)
        result_type: Any = Any,
        message_id: str | None = None,
        ttl: float | None = None,
        delay: float | None = None,
        headers: Mapping[str, str] | None = None,
        durability: Durability | None = None,
    ) -> Any:
        """Send ``data`` to ``key``'s partition and wait for its result (see ``Queue.call``)."""
        queue = self._route(key, message_id)
        return await queue.call(
            data,
            timeout=timeout,
            result_type=result_type,
            message_id=message_id,
            ttl=ttl,
            delay=delay,
            headers=headers,
            durability=durability,
        )

    async def get_result(
        self,
        message_id: str,
        *,
        key: str | bytes | None = None,
        timeout: float | None = 30.0,  # noqa: ASYNC109 - the result's deadline (API)
        result_type: Any = Any,
    ) -> Any:
        """Wait for the result of ``message_id`` (see ``Queue.get_result``): on ``key``'s
        partition, or on any partition without ``key``."""
        from leanmq_async import results

        queues = list(self._partitions) if key is None else [self.partition_for(key)]
        return await results.get_result(queues, message_id, timeout, result_type)

    async def send_messages(
        self,
        items: Iterable[Any],
        *,
        key: str | bytes | None = None,
        keys: Sequence[str | bytes] | None = None,
        ttl: float | None = None,
        delay: float | None = None,
        headers: Mapping[str, str] | None = None,
        durability: Durability | None = None,
        message_ids: Sequence[str | None] | None = None,
        dedup_window: float | None = None,
        priority: int | str | None = None,
    ) -> list[str]:
        """Send many messages (at level ``priority``); return their ids in ``items``' order.

        ``key`` routes all of them to one partition (one atomic script call); ``keys``
        gives one key per item; without either an item with a ``message_ids`` entry goes
        to that id's partition, the others are spread round-robin. Messages are
        grouped per partition, keeping their order, and each group is written atomically
        with one script call, the groups concurrently: **atomic per partition only**.

        Every item is encoded before anything is written. If some groups fail, the others
        are still written and one :class:`~leanmq_async.PartialSendError` carries the ids
        written (None for the items not written) and each failed partition's error. A
        send to one partition raises that partition's error (nothing was written).

        ``durability``: wait for replicas like this for this call (default: the client's).
        Every group finishes its wait; if any was not confirmed, one
        :class:`~leanmq_async.cluster.NotReplicatedError` carries every id, in order.
        """
        if isinstance(items, str | bytes | bytearray | Mapping):
            raise ConfigurationError(
                f"send_messages takes an iterable of payloads, not a single "
                f"{type(items).__name__}: send_messages([data]) or send_message(data)"
            )
        check_ttl_and_delay(ttl, delay)  # refused before any partition is written
        payloads = list(items)
        mids = per_item_ids(message_ids, len(payloads))
        if key is not None and keys is not None:
            raise ConfigurationError("pass either key (one for all) or keys (one per item)")
        if keys is not None:
            if isinstance(keys, str | bytes | bytearray):
                raise ConfigurationError("keys must be a sequence of keys, one per item")
            if len(keys) != len(payloads):
                raise ConfigurationError(
                    f"keys has {len(keys)} entries for {len(payloads)} items: give one per item"
                )
            targets = [self.partition_for(k) for k in keys]
        elif key is not None:
            targets = [self.partition_for(key)] * len(payloads)
        else:
            targets = [self._route(None, mid) for mid in mids]
        groups: dict[int, list[int]] = {}
        index_of = {id(q): i for i, q in enumerate(self._partitions)}
        for position, queue in enumerate(targets):
            groups.setdefault(index_of[id(queue)], []).append(position)
        if durability is not None:
            durability.check(self._mq.connection_settings)
        waiting = durability if durability is not None else self._mq.store.durability
        if waiting is not None and len(groups) > 1:
            # Refused here once, rather than by every group at the same time.
            with translate_errors("INFO"):
                await check_wait_support(self._mq.redis, waiting)
        # Encoded first: a payload the codec refuses stops the call before any write.
        ops = [
            q._send_op(data, mid, ttl, delay, headers, dedup_window, priority)[0]
            for q, data, mid in zip(targets, payloads, mids, strict=True)
        ]
        ids: list[str | None] = [None] * len(payloads)
        unconfirmed: list[tuple[int, NotReplicatedError]] = []
        failed: dict[int, LeanMQError] = {}

        async def send_group(part: int, positions: list[int]) -> None:
            try:
                sent = await self._mq.store.send([ops[p] for p in positions], durability)
            except NotReplicatedError as exc:
                # Written all the same: keep the ids, let the other groups finish waiting.
                sent = exc.stream_ids
                unconfirmed.append((part, exc))
            except LeanMQError as exc:
                failed[part] = exc  # the other groups go on: their ids are reported
                return
            for p, sid in zip(positions, sent, strict=True):
                ids[p] = sid

        if groups:
            await self._concurrently([partial(send_group, *g) for g in groups.items()])
        if failed and len(groups) == 1:
            raise failed.popitem()[1]  # one partition: written whole or not at all
        if failed:
            errors = {self._partitions[i].name: failed[i] for i in sorted(failed)}
            written = sum(sid is not None for sid in ids)
            first = next(iter(errors.values()))
            raise PartialSendError(
                f"{written} of {len(payloads)} messages written: {len(failed)} of the "
                f"{len(groups)} partitions failed ({', '.join(errors)}): {first}; "
                "resend only the items whose stream_ids entry is None",
                ids,
                errors,
            ) from first
        sent_ids = [sid for sid in ids if sid is not None]  # every one, none failed
        if unconfirmed:
            unconfirmed.sort(key=lambda u: u[0])
            names = ", ".join(self._partitions[i].name for i, _ in unconfirmed)
            first = unconfirmed[0][1]
            raise NotReplicatedError(
                f"every message was written, but {len(unconfirmed)} of the {len(groups)} "
                f"partitions written ({names}) were not confirmed: {first}",
                sent_ids,
                min(exc.acknowledged for _, exc in unconfirmed),
            ) from first
        return sent_ids

    # -- inspecting ----------------------------------------------------------------------

    async def partition_infos(self) -> list[QueueInfo]:
        """:class:`QueueInfo` of every partition, in index order (one pipelined call)."""
        parts = self._partitions
        infos = await self._mq.store.stream_infos([(p.stream, p.keys) for p in parts], levels=True)
        return [info_from(p, info) for p, info in zip(parts, infos, strict=True)]

    async def get_info(self) -> QueueInfo:
        """The partitions' info summed: message, pending and delayed counts.

        ``name`` is the logical name; ``consumer_group`` the group partitions share when
        they share one (a handler's ``group=``), else None; ``consumer_groups`` lists the
        distinct group names; ``created_at`` is the earliest partition's.
        """
        infos = await self.partition_infos()
        groups = {i.consumer_group for i in infos}
        created = [i.created_at for i in infos if i.created_at is not None]
        return QueueInfo(
            name=self.name,
            is_dlq=False,
            message_count=sum(i.message_count for i in infos),
            consumer_group=groups.pop() if len(groups) == 1 else None,
            pending_messages=sum(i.pending_messages for i in infos),
            created_at=min(created) if created else None,
            delayed_messages=sum(i.delayed_messages for i in infos),
            consumer_groups=tuple(sorted({g for i in infos for g in i.consumer_groups})),
        )

    async def cancel(self, message_id: str, *, key: str | bytes) -> CancelOutcome:
        """:meth:`Queue.cancel <leanmq_async.Queue.cancel>` in the partition of ``key`` (the
        key the message was sent with: stream ids are only unique within a partition)."""
        return await self.partition_for(key).cancel(message_id)

    async def purge(self) -> int:
        """Remove every message of every partition (delayed ones too); return how many."""
        total = 0
        for queue in self._partitions:
            total += await queue.purge()
        return total

    # -- worker --------------------------------------------------------------------------

    @overload
    def handler(self, func: F, /) -> F: ...

    @overload
    def handler(
        self, func: None = None, /, **options: Unpack[HandlerKwargs]
    ) -> Callable[[F], F]: ...

    def handler(
        self, func: F | None = None, /, **options: Unpack[HandlerKwargs]
    ) -> F | Callable[[F], F]:
        """Register one coroutine function on every partition, with the same options.

        ``concurrency`` applies to each partition (see :mod:`leanmq_async.partition`).
        Either every partition gets the handler or none does.
        """

        def decorate(f: F) -> F:
            group = options.get("group")
            for queue in self._partitions:
                wanted = group or queue.consumer_group
                for existing in self._mq.handlers:
                    if existing.queue == queue and existing.group == wanted:
                        raise ConfigurationError(
                            f"partition {queue.name!r} of {self.name!r} already has a handler "
                            f"for group {wanted!r} ({existing.name}); use another group= "
                            "for fan-out"
                        )
            registered = len(self._mq.handlers)
            try:
                for queue in self._partitions:
                    queue.handler(**options)(f)
            except BaseException:
                del self._mq.handlers[registered:]
                raise
            return f

        return decorate(func) if func is not None else decorate
