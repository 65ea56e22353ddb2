"""The one module that sends commands to Redis.

:class:`Store` wraps a ``redis.asyncio`` client and offers each queue operation as one
call: one command, one pipeline or one script, so a reader can count round trips here.
Every redis-py error is translated by :func:`~leanmq_async.connection.translate_errors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import anyio
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.commands.core import AsyncScript

from leanmq_async import scripts
from leanmq_async._log import get_logger
from leanmq_async.cluster import (
    AnyRedis,
    Durability,
    NotReplicatedError,
    check_one_slot,
    is_cluster,
    queue_slot,
    write_and_wait,
)
from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import ConfigurationError, LeanMQError
from leanmq_async.idempotency import split_send_reply
from leanmq_async.keys import QueueKeys, registry_key
from leanmq_async.message import DeadLetterResult
from leanmq_async.send_errors import client_retries, translate_send_errors

__all__ = [
    "ExpireResult",
    "MemoryUsage",
    "RawEntry",
    "ReclaimResult",
    "SendOp",
    "SettleCall",
    "Store",
]

# Ids per script call where a caller passes any number (leases, requeues): bounded work
# per call (the scripts also slice what they unpack; Lua's unpack fails at ~8,000).
_ID_BATCH = 1000

RawEntry = tuple[bytes, dict[bytes, bytes] | None]
"""A stream entry as Redis returns it: ``(stream id, fields)``; fields are None if deleted."""


MIN_REDIS_VERSION = (7, 0)
"""The oldest Redis (or Valkey) server leanmq_async runs on."""


class SendOp:
    """One message to write: which queue, the encoded envelope, TTL and delay (ms); with
    ``dedup_ms`` > 0, deduplicated by ``message_id`` (see :mod:`leanmq_async.idempotency`)."""

    __slots__ = ("body", "dedup_ms", "delay_ms", "field", "keys", "member", "message_id", "ttl_ms")

    def __init__(
        self,
        keys: QueueKeys,
        field: bytes,
        body: bytes,
        ttl_ms: int = 0,
        delay_ms: int = 0,
        member: str = "",
        message_id: str = "",
        dedup_ms: int = 0,
    ) -> None:
        self.keys = keys
        self.field = field
        self.body = body
        self.ttl_ms = ttl_ms
        self.delay_ms = delay_ms
        self.member = member
        self.message_id = message_id
        self.dedup_ms = dedup_ms


class ReclaimResult:
    """What one reclaim step found: claimed entries, their delivery counts, lost ids."""

    __slots__ = ("deliveries", "entries", "missing", "next_start")

    def __init__(
        self,
        entries: list[RawEntry],
        deliveries: dict[bytes, int],
        missing: list[bytes],
        next_start: str,
    ) -> None:
        self.entries = entries
        self.deliveries = deliveries
        self.missing = missing
        self.next_start = next_start


class ExpireResult:
    """What one expiry batch (:data:`scripts.EXPIRE`) did.

    ``scanned``: index members looked at (equal to the limit: more may be due);
    ``removed``: entries deleted; ``unhandled``: entries that expired unhandled for at
    least one group; ``rechecked``: entries pending in a group, left to their consumer
    and looked at again later; ``left``: index members still due after the batch
    (counted up to the batch's limit).
    """

    __slots__ = ("left", "rechecked", "removed", "scanned", "unhandled")

    def __init__(self, scanned: int, removed: int, unhandled: int, rechecked: int, left: int):
        self.scanned = scanned
        self.removed = removed
        self.unhandled = unhandled
        self.rechecked = rechecked
        self.left = left

    def __repr__(self) -> str:
        return (
            f"<ExpireResult scanned={self.scanned} removed={self.removed} "
            f"unhandled={self.unhandled} rechecked={self.rechecked} left={self.left}>"
        )


class MemoryUsage:
    """Redis memory use: bytes used, ``maxmemory`` (0: no limit) and the eviction policy."""

    __slots__ = ("maxmemory", "policy", "used")

    # Above this share of maxmemory, Redis is under memory pressure: a worker trims
    # acknowledged history at once (whatever its retention) and health warns.
    PRESSURE = 0.9
    # Within 2 % of maxmemory: a write of any size is refused (the reply to a refusal
    # frees its buffers, so used memory reads a little under the limit again).
    FULL = 0.98

    def __init__(self, used: int, maxmemory: int, policy: str) -> None:
        self.used = used
        self.maxmemory = maxmemory
        self.policy = policy

    def __repr__(self) -> str:
        return f"<MemoryUsage {self.used}/{self.maxmemory} ({self.ratio:.0%}) {self.policy}>"

    @property
    def ratio(self) -> float:
        """Used / maxmemory (0.0 when there is no limit)."""
        return self.used / self.maxmemory if self.maxmemory else 0.0

    @property
    def under_pressure(self) -> bool:
        return self.ratio >= self.PRESSURE

    @property
    def full(self) -> bool:
        """At ``maxmemory`` with ``noeviction``: Redis refuses writes (sends, retries)."""
        return self.ratio >= self.FULL and self.policy == "noeviction"

    def advice(self) -> str:
        """What is wrong and what to do, for a health report."""
        state = "writes are refused (OOM)" if self.full else "writes will soon be refused"
        return (
            f"{self.describe()}: {state}. A running worker trims acknowledged history at once "
            "under memory pressure (logged as trimmed_early); if memory stays high, what "
            "remains is unhandled: run or scale workers, empty or requeue the dead-letter "
            "queues, or raise maxmemory."
        )

    def describe(self) -> str:
        return (
            f"Redis uses {self.used:,} bytes, {self.ratio:.0%} of maxmemory {self.maxmemory:,} "
            f"(policy {self.policy or '?'})"
        )


class SettleCall:
    """One settling script call (retry or dead-letter), to run in a batch.

    ``parse`` turns the script's reply into the call's result (default: ``int``).
    """

    __slots__ = ("args", "keys", "parse", "script")

    def __init__(
        self,
        script: AsyncScript,
        keys: list[str],
        args: list[Any],
        parse: Callable[[Any], int] = int,
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.parse = parse


# Delayed entries moved per read_after_due call (more due ones: the next call moves them).
_DUE_BATCH = 500


def _read_entries(reply: Any) -> list[RawEntry]:
    """The entries of an XREADGROUP reply for one stream."""
    if not reply:
        return []
    # RESP2 returns [[stream, entries]]; RESP3 returns {stream: [entries]}.
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0])
    return list(reply[0][1])


def _per_node(replies: Any) -> bool:
    """Is this a cluster's ``{node name: reply}`` (not one RESP3 HELLO map)?"""
    return isinstance(replies, dict) and b"version" not in replies and "version" not in replies


def _hello_version(reply: Any) -> tuple[int, ...]:
    """``(7, 0, 15)`` from a HELLO reply (a map under RESP3, a flat list under RESP2)."""
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    raw = fields.get(b"version", fields.get("version", b"0"))
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def _pairs_to_dict(flat: Sequence[Any]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


class Store:
    """Queue operations on one Redis client (owned or borrowed)."""

    server_version: tuple[int, ...] | None = None
    """The server's version once :meth:`check_version` asked for it."""

    def __init__(self, client: AnyRedis) -> None:
        # Typed as the single-node client: a RedisCluster offers the same commands, but
        # keyless ones, scripts in pipelines and MULTI need one slot (see leanmq_async.cluster).
        self.client = cast(aioredis.Redis, client)
        # Redis Cluster: atomic multi-queue sends must stay in one slot.
        self.cluster = is_cluster(client)
        # Wait for replicas after producer sends (None: the fast path, no WAIT).
        self.durability: Durability | None = None
        self._scripts: list[AsyncScript] = []

        def register(text: str) -> AsyncScript:
            script: AsyncScript = client.register_script(text)
            self._scripts.append(script)
            return script

        self._send = register(scripts.SEND)
        self._move_due = register(scripts.MOVE_DUE)
        self._retry = register(scripts.RETRY)
        self._dead_letter = register(scripts.DEAD_LETTER)
        self._requeue = register(scripts.REQUEUE)
        self._expire = register(scripts.EXPIRE)
        self._expire_read = register(scripts.EXPIRE_READ)
        self._reclaim = register(scripts.RECLAIM)
        self._extend = register(scripts.EXTEND_LEASES)
        self._trim = register(scripts.TRIM)
        self._purge = register(scripts.PURGE)
        self._create_groups = register(scripts.CREATE_GROUPS)
        self._delete_idle_consumer = register(scripts.DELETE_IDLE_CONSUMER)
        self._move_due_loaded = False
        self._clock_offset_ms = 0.0
        self._clock_synced_at = -1e18
        # Moves the clock every time decision uses (the scripts' and redis_now_ms) forward
        # by this many ms. Always 0 in production; a test sets it to let time pass at once.
        self.clock_shift_ms = 0
        # -- idempotent sends and honest send errors (issue 17) --
        self.dedup_hits = 0  # sends that found their message_id already sent
        self._retries = client_retries(client)  # > 0: every send error is "outcome unknown"

    async def load_scripts(self) -> None:
        """Load every script now (on every primary of a cluster).

        Not needed for correctness (a call that meets NOSCRIPT loads its script and runs
        again), but a worker does it at start so that its first settling batch, maybe
        hundreds of failures at once, does not pay for that.
        """
        with translate_errors("SCRIPT LOAD"):
            for script in self._scripts:
                await self.client.script_load(script.script)

    # -- clock ---------------------------------------------------------------------------

    async def sync_clock(self) -> None:
        """Measure the offset between this process's monotonic clock and Redis's.

        Monotonic, not wall-clock time: a step of the host clock between two measurements
        does not move the estimate (and expiry is confirmed by Redis anyway).
        """
        with translate_errors("TIME"):
            before = time.monotonic()
            sec, usec = await self.client.time()
            after = time.monotonic()
        redis_ms = sec * 1000 + usec / 1000
        self._clock_offset_ms = redis_ms - (before + after) * 500
        self._clock_synced_at = after

    async def redis_now_ms(self, max_age: float = 60.0) -> float:
        """The Redis clock in ms, estimated locally (re-measured every ``max_age`` s).

        An estimate, for pre-filtering: a decision that an entry expired is confirmed by
        Redis (:data:`scripts.EXPIRE_READ`).
        """
        if time.monotonic() - self._clock_synced_at > max_age:
            await self.sync_clock()
        return time.monotonic() * 1000 + self._clock_offset_ms + self.clock_shift_ms

    # -- queues --------------------------------------------------------------------------

    async def create_queue(
        self,
        prefix: str,
        keys: QueueKeys,
        group: str,
        dlq_group: str,
        *,
        create_group: bool = True,
    ) -> None:
        """Create both streams with their groups, the metadata and the registry entry.

        Two round trips: the groups first, so a key of the wrong type fails the call
        before the queue is registered. ``create_group=False``: only the DLQ's group
        (a worker creates the groups its handlers read, not a default nobody reads:
        retention keeps every entry a group has not acknowledged).
        """
        streams, groups = [keys.dlq], [dlq_group]
        if create_group:
            streams, groups = [keys.stream, keys.dlq], [group, dlq_group]
        with translate_errors("create queue"):
            await self._create_groups(keys=streams, args=groups)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hsetnx(keys.meta, "created_at", repr(time.time()))
                pipe.hsetnx(keys.meta, "consumer_group", group)
                pipe.hsetnx(keys.meta, "dlq_group", dlq_group)
                pipe.sadd(registry_key(prefix), keys.base)
                await pipe.execute()

    async def ensure_groups(self, streams: Sequence[str], groups: Sequence[str]) -> int:
        """Create missing consumer groups (reading from the start); return how many.

        On a cluster one script call per hash slot (a script's keys share one slot).
        """
        batches: dict[int, tuple[list[str], list[str]]] = {}
        for stream, group in zip(streams, groups, strict=True):
            slot = queue_slot(stream) if self.cluster else 0
            batch = batches.setdefault(slot, ([], []))
            batch[0].append(stream)
            batch[1].append(group)
        created = 0
        with translate_errors("XGROUP CREATE"):
            for keys, args in batches.values():
                created += int(await self._create_groups(keys=keys, args=args))
        return created

    async def queue_exists(self, keys: QueueKeys, stream: str | None = None) -> bool:
        """Was the pair created (its metadata exists), and does ``stream`` exist if given?"""
        with translate_errors("EXISTS"):
            if stream is None:
                return bool(await self.client.exists(keys.meta))
            return int(await self.client.exists(keys.meta, stream)) == 2

    async def registered_queues(self, prefix: str) -> list[str]:
        with translate_errors("SMEMBERS"):
            names = await self.client.smembers(registry_key(prefix))
        return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names)

    async def delete_queue(self, prefix: str, keys: QueueKeys, delete_dlq: bool) -> int:
        """Delete a queue's keys (and its DLQ's); return the number of keys removed.

        Without ``delete_dlq`` the metadata and registry entry stay, for the DLQ's sake.
        """
        kept = () if delete_dlq else (keys.dlq, keys.meta)
        doomed = [k for k in keys.all() if k not in kept]
        with translate_errors("delete queue"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(*doomed)
                if delete_dlq:
                    pipe.srem(registry_key(prefix), keys.base)
                removed, *_ = await pipe.execute()
        return int(removed)

    async def stream_infos(self, items: Sequence[tuple[str, QueueKeys]]) -> list[dict[str, Any]]:
        """XLEN, groups, metadata and delayed count for each ``(stream, keys)``: one round trip."""
        with translate_errors("queue info"):
            async with self.client.pipeline(transaction=False) as pipe:
                for stream, keys in items:
                    pipe.xlen(stream)
                    pipe.xinfo_groups(stream)
                    pipe.hgetall(keys.meta)
                    pipe.zcard(keys.delayed)
                replies = await pipe.execute(raise_on_error=False)
        out: list[dict[str, Any]] = []
        for i in range(len(items)):
            length, groups, meta, delayed = replies[i * 4 : i * 4 + 4]
            for reply in (length, meta, delayed):
                if isinstance(reply, Exception):
                    with translate_errors("queue info"):
                        raise reply
            out.append(
                {
                    "length": int(length),
                    # XLEN answered, so an XINFO error means the stream does not exist.
                    "exists": not isinstance(groups, redis_errors.ResponseError),
                    "groups": [] if isinstance(groups, redis_errors.ResponseError) else groups,
                    "meta": {k.decode(): v.decode() for k, v in meta.items()},
                    "delayed": int(delayed),
                }
            )
        return out

    async def purge(self, keys: QueueKeys, stream: str, include_delayed: bool) -> int:
        expiry = keys.expiry_of(stream)
        purge_keys = [stream, expiry, keys.delayed, keys.delayed_data]
        with translate_errors("purge"):
            if not include_delayed:
                return int(await self._purge(keys=purge_keys, args=["0"]))
            # A main queue's dedup records go with it, in the same MULTI (issue 17).
            async with self.client.pipeline(transaction=True) as pipe:
                await self._purge(keys=purge_keys, args=["1"], client=pipe)
                pipe.delete(keys.dedup, keys.dedup_until)
                purged, _ = await pipe.execute()
            return int(purged)

    # -- sending -------------------------------------------------------------------------

    async def xadd(
        self, stream: str, field: bytes, body: bytes, durability: Durability | None = None
    ) -> str:
        """The fast path: one plain XADD, for a message without TTL or delay.

        ``durability`` (default: the store's) waits for replicas after the write.
        """
        if durability is None:
            durability = self.durability
        with translate_send_errors("XADD", retries=self._retries):
            if durability is not None:
                command = ("XADD", stream, "*", field, body)
                sid = await write_and_wait(self.client, stream, command, durability)
            else:
                sid = await self.client.xadd(stream, {field: body})
        return sid.decode() if isinstance(sid, bytes) else str(sid)

    async def send(self, ops: Sequence[SendOp], durability: Durability | None = None) -> list[str]:
        """Write ``ops`` with one script call: all of them, or none on any error.

        ``durability`` (default: the store's) waits for replicas after the write.
        """
        if self.cluster:
            check_one_slot(ops)
        if durability is None:
            durability = self.durability
        key_index: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = [len(ops)]
        for op in ops:
            index = key_index.get(op.keys.base)
            if index is None:
                index = key_index[op.keys.base] = len(key_index) + 1
                keys += [op.keys.stream, op.keys.expiry, op.keys.delayed, op.keys.delayed_data]
                keys += [op.keys.dedup, op.keys.dedup_until]
            args += [index, op.ttl_ms, op.delay_ms, op.field, op.body, op.member]
            args += [op.message_id, op.dedup_ms]
        args.append(self.clock_shift_ms)
        with translate_send_errors("send", retries=self._retries):
            try:
                if durability is not None:
                    command = ("EVALSHA", self._send.sha, len(keys), *keys, *args)
                    reply = await write_and_wait(
                        self.client, keys[0], command, durability, self._send
                    )
                else:
                    reply = await self._send(keys=keys, args=args)
            except NotReplicatedError as exc:
                exc.stream_ids = exc.stream_ids[: len(ops)]  # the duplicates' positions follow
                raise
        ids, duplicates = split_send_reply(reply, len(ops))
        if duplicates:
            self._count_duplicates(ops, ids, duplicates)
        return ids

    def _count_duplicates(self, ops: Sequence[SendOp], ids: list[str], dups: list[int]) -> None:
        self.dedup_hits += len(dups)
        log = get_logger("leanmq_async")
        for i in dups:
            op = ops[i]
            log.debug("send_deduplicated", queue=op.keys.base, message_id=op.message_id, id=ids[i])

    # -- reading and acknowledging ------------------------------------------------------

    async def read_group(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int,
        block_ms: int | None,
        start: str = ">",
        acks: Sequence[bytes] = (),
    ) -> list[RawEntry]:
        """XREADGROUP: new entries (``start='>'``) or this consumer's pending ones (``'0'``).

        ``acks``: XACK these first, in the same round trip (the worker's hot path).
        """
        with translate_errors("XREADGROUP"):
            if acks:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.xack(stream, group, *acks)
                    pipe.xreadgroup(group, consumer, {stream: start}, count=count, block=block_ms)
                    _, reply = await pipe.execute()
            else:
                reply = await self.client.xreadgroup(
                    group, consumer, {stream: start}, count=count, block=block_ms
                )
        return _read_entries(reply)

    async def read_after_due(
        self, keys: QueueKeys, group: str, consumer: str, count: int, block_ms: int | None
    ) -> tuple[list[RawEntry], int]:
        """Move due delayed entries into the stream, then XREADGROUP new entries.

        One round trip (MOVE_DUE pipelined before the read; on a cluster, two), so a
        reader without a worker sees delayed messages at their due time. Returns the
        entries and the ms until the next delayed entry is due (-1: none is waiting).
        """
        move_keys = [keys.stream, keys.delayed, keys.delayed_data, keys.expiry]
        move_args = [_DUE_BATCH, self.clock_shift_ms]
        if self.cluster:
            with translate_errors("move due"):
                moved = await self._move_due(keys=move_keys, args=move_args)
            entries = await self.read_group(keys.stream, group, consumer, count, block_ms)
            return entries, int(moved[1])
        with translate_errors("XREADGROUP"):
            if not self._move_due_loaded:
                await self.client.script_load(self._move_due.script)
                self._move_due_loaded = True
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._move_due.sha, len(move_keys), *move_keys, *move_args)
                pipe.xreadgroup(group, consumer, {keys.stream: ">"}, count=count, block=block_ms)
                moved, reply = await pipe.execute(raise_on_error=False)
            if isinstance(reply, Exception):
                raise reply
        entries = _read_entries(reply)
        if isinstance(moved, Exception):
            # Entries read are handed out all the same (they are pending now); the
            # error shows again on a read that finds nothing.
            if entries:
                return entries, 0
            if isinstance(moved, redis_errors.NoScriptError):
                # Redis lost its scripts (restarted): load it and read again.
                self._move_due_loaded = False
                return await self.read_after_due(keys, group, consumer, count, block_ms)
            with translate_errors("move due"):
                raise moved
        return entries, int(moved[1])

    async def ack(self, stream: str, group: str, ids: Sequence[bytes | str]) -> int:
        with translate_errors("XACK"):
            return int(await self.client.xack(stream, group, *ids))

    async def delete_messages(
        self, keys: QueueKeys, stream: str, group: str, ids: Sequence[str]
    ) -> int:
        """XACK + XDEL + expiry cleanup in one MULTI; return the number deleted."""
        expiry = keys.expiry_of(stream)
        with translate_errors("delete messages"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xack(stream, group, *ids)
                pipe.xdel(stream, *ids)
                pipe.zrem(expiry, *ids)
                _, deleted, _ = await pipe.execute()
        return int(deleted)

    async def entries(self, stream: str, ids: Sequence[str]) -> list[RawEntry]:
        """The entries with these ids (one XRANGE each, pipelined), skipping missing ones."""
        with translate_errors("XRANGE"):
            async with self.client.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.xrange(stream, sid, sid)
                replies = await pipe.execute()
        return [r[0] for r in replies if r]

    async def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[RawEntry]:
        with translate_errors("XRANGE"):
            reply: Any = await self.client.xrange(stream, start, end, count=count)
        return list(reply)

    # -- atomic moves --------------------------------------------------------------------

    async def dead_letter(
        self,
        keys: QueueKeys,
        group: str,
        consumer: str,
        source_name: str,
        items: Sequence[tuple[str, str, str, str, int]],
    ) -> DeadLetterResult:
        """Move ``(id, reason, error_type, traceback, attempts)`` items to the DLQ atomically.

        Only entries pending in ``group`` move; with ``consumer`` set, only those this
        consumer still owns. The result says which ids moved and why the others did not.
        """
        args: list[Any] = [group, consumer, source_name, len(items)]
        for item in items:
            args.extend(item)
        with translate_errors("move to DLQ"):
            reply = await self._dead_letter(keys=[keys.stream, keys.dlq], args=args)
        return DeadLetterResult.from_reply([item[0] for item in items], reply)

    def retry_call(
        self, keys: QueueKeys, group: str, consumer: str, sid: str, delay_ms: int, attempts: int
    ) -> SettleCall:
        """Ack ``sid`` and schedule its retry in one step (:data:`scripts.RETRY`), as one
        call of a :meth:`settle_many` batch: 1 done, 0 entry deleted (acked), -1 not owned."""
        stream_keys = [keys.stream, keys.delayed, keys.delayed_data, keys.expiry]
        args = [group, consumer, sid, delay_ms, attempts, self.clock_shift_ms]
        return SettleCall(self._retry, stream_keys, args)

    def dead_letter_call(
        self,
        keys: QueueKeys,
        group: str,
        consumer: str,
        source_name: str,
        item: tuple[str, str, str, str, int],
    ) -> SettleCall:
        """:meth:`dead_letter` of one item as one call of a :meth:`settle_many` batch:
        1 moved, 0 not (no longer owned by ``consumer``)."""
        args = [group, consumer, source_name, 1, *item]

        def parse(reply: Any) -> int:
            return DeadLetterResult.from_reply([item[0]], reply).count

        return SettleCall(self._dead_letter, [keys.stream, keys.dlq], args, parse)

    async def settle_many(self, calls: Sequence[SettleCall]) -> list[int | LeanMQError]:
        """Run settling scripts in one pipeline; each call's reply, or its own error.

        Plain EVALSHAs (a worker loads its scripts at start), so no ``SCRIPT EXISTS``
        round trip and no extra ACL permission; calls that meet NOSCRIPT (Redis restarted
        since) load their script and run again. A broken connection fails the whole batch
        (:class:`LeanMQConnectionError`): the scripts check ownership first, so running a
        batch again never repeats a move.
        """
        replies = await self._evalsha_pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)]
        if missing:
            with translate_errors("SCRIPT LOAD"):
                for script in {id(calls[i].script): calls[i].script for i in missing}.values():
                    await self.client.script_load(script.script)
            again = await self._evalsha_pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        results: list[int | LeanMQError] = []
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                try:
                    with translate_errors("settle"):
                        raise reply
                except LeanMQError as exc:
                    results.append(exc)
            else:
                results.append(call.parse(reply))
        return results

    async def _evalsha_pipeline(self, calls: Sequence[SettleCall]) -> list[Any]:
        if self.cluster:
            return await self._each_concurrently(calls)
        with translate_errors("settle"):
            async with self.client.pipeline(transaction=False) as pipe:
                for call in calls:
                    pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
                return list(await pipe.execute(raise_on_error=False))

    async def _each_concurrently(self, calls: Sequence[SettleCall]) -> list[Any]:
        """Cluster mode: redis-py refuses EVALSHA in a cluster pipeline, so one call each."""
        replies: list[Any] = [None] * len(calls)

        async def run(i: int, call: SettleCall) -> None:
            try:
                replies[i] = await call.script(keys=call.keys, args=call.args)
            except (redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
                replies[i] = exc

        async with anyio.create_task_group() as tg:
            for i, call in enumerate(calls):
                tg.start_soon(run, i, call)
        return replies

    async def requeue(self, keys: QueueKeys, dlq_group: str, ids: Sequence[str]) -> int:
        """Requeue DLQ entries (each one atomically); one script call per ``_ID_BATCH``."""
        moved = 0
        with translate_errors("requeue from DLQ"):
            for i in range(0, len(ids), _ID_BATCH):
                batch = ids[i : i + _ID_BATCH]
                moved += int(
                    await self._requeue(
                        keys=[keys.dlq, keys.stream, keys.expiry], args=[dlq_group, *batch]
                    )
                )
        return moved

    async def move_due(self, keys: QueueKeys, limit: int = 500) -> tuple[int, int]:
        """Move due delayed entries into the stream; return ``(moved, ms to next or -1)``."""
        with translate_errors("move due"):
            moved, wait = await self._move_due(
                keys=[keys.stream, keys.delayed, keys.delayed_data, keys.expiry],
                args=[limit, self.clock_shift_ms],
            )
        return int(moved), int(wait)

    async def expire(
        self,
        keys: QueueKeys,
        source_name: str,
        policy: str,
        limit: int,
        recheck_ms: int = 1000,
        group_policies: Mapping[str, str] | None = None,
    ) -> ExpireResult:
        """One bounded expiry batch (:data:`scripts.EXPIRE`): remove (or dead-letter) up to
        ``limit`` expired entries pending in no group; re-check pending ones after
        ``recheck_ms``. ``group_policies`` overrides ``policy`` for the groups named."""
        args: list[Any] = [limit, policy, source_name, self.clock_shift_ms, recheck_ms]
        for group, group_policy in (group_policies or {}).items():
            args += [group, group_policy]
        with translate_errors("expire"):
            reply = await self._expire(keys=[keys.stream, keys.expiry, keys.dlq], args=args)
        return ExpireResult(*(int(r) for r in reply))

    def expire_read_call(
        self,
        keys: QueueKeys,
        group: str,
        consumer: str,
        source_name: str,
        policy: str,
        sid: str,
        expires_at_ms: int,
    ) -> SettleCall:
        """Settle a read entry as expired if the Redis clock agrees (:data:`scripts.EXPIRE_READ`),
        as one call of a :meth:`settle_many` batch: 1 expired (acked or dead-lettered),
        0 still live (handle it), -1 expired but no longer owned by ``consumer``."""
        args = [group, consumer, policy, source_name, self.clock_shift_ms, sid, expires_at_ms]
        return SettleCall(self._expire_read, [keys.stream, keys.dlq], args)

    async def reclaim(
        self,
        stream: str,
        group: str,
        consumer: str,
        min_idle_ms: int,
        count: int,
        start: str = "-",
        owner: str = "",
    ) -> ReclaimResult:
        """Claim idle pending entries (of ``owner`` only, if given); see :data:`scripts.RECLAIM`."""
        with translate_errors("reclaim"):
            entries, counts, missing, nxt = await self._reclaim(
                keys=[stream], args=[group, consumer, min_idle_ms, count, start, owner]
            )
        deliveries = {counts[i]: int(counts[i + 1]) for i in range(0, len(counts), 2)}
        raw: list[RawEntry] = [(e[0], _pairs_to_dict(e[1])) for e in entries]
        return ReclaimResult(raw, deliveries, list(missing), nxt.decode() if nxt else "")

    async def extend_leases(
        self, stream: str, group: str, consumer: str, ids: Sequence[bytes | str]
    ) -> list[bytes]:
        """Reset the idle time of entries still owned; return the ids whose lease was lost.

        Any number of ids: one script call per ``_ID_BATCH`` of them.
        """
        lost: list[bytes] = []
        with translate_errors("extend leases"):
            for i in range(0, len(ids), _ID_BATCH):
                batch = ids[i : i + _ID_BATCH]
                lost += await self._extend(keys=[stream], args=[group, consumer, *batch])
        return lost

    async def trim(self, stream: str, max_age_ms: int) -> int:
        with translate_errors("trim"):
            return int(await self._trim(keys=[stream], args=[max_age_ms, self.clock_shift_ms]))

    async def delete_consumer_if_idle(self, stream: str, group: str, consumer: str) -> bool:
        """Remove a consumer only if it holds no pending entries (never loses any)."""
        with translate_errors("XGROUP DELCONSUMER"):
            return bool(await self._delete_idle_consumer(keys=[stream], args=[group, consumer]))

    async def consumers(self, stream: str, group: str) -> list[dict[str, Any]]:
        """XINFO CONSUMERS: name, pending and idle time of each consumer of ``group``."""
        with translate_errors("XINFO CONSUMERS"):
            return list(await self.client.xinfo_consumers(stream, group))

    async def memory(self) -> MemoryUsage:
        """``INFO memory``: used memory against ``maxmemory`` (on a cluster, the fullest
        primary)."""
        with translate_errors("INFO memory"):
            reply: Any = await self.client.info("memory")
        # A cluster client answers per node: {node: {field: value}}.
        infos = [reply] if "used_memory" in reply else list(reply.values())
        usages = [
            MemoryUsage(
                int(info.get("used_memory", 0)),
                int(info.get("maxmemory", 0)),
                str(info.get("maxmemory_policy", "")),
            )
            for info in infos
        ]
        return max(usages, key=lambda u: u.ratio)

    async def ping(self) -> bool:
        with translate_errors("PING"):
            return bool(await self.client.ping())

    async def check_version(self) -> tuple[int, ...]:
        """The Redis version (the lowest node's on a cluster); raise if below 7.0.

        Asked once per Store, then remembered, with ``HELLO`` (no protocol argument: the
        connection's protocol is unchanged), which every ACL user may send. Redis 6.2
        lacks what the worker and the stats rely on (XINFO's ``lag``/``entries-read``/
        ``entries-added``, the deleted ids of XAUTOCLAIM), so it is refused here with a
        clear error rather than failing later in obscure ways.
        """
        if self.server_version is not None:
            return self.server_version
        with translate_errors("HELLO"):
            try:
                client: Any = self.client  # redis-py's execute_command is untyped
                if self.cluster:  # every node, once the client knows them
                    if not client.get_nodes():
                        await client.ping()
                    replies = await client.execute_command("HELLO", target_nodes=client.get_nodes())
                    found = list(replies.values()) if _per_node(replies) else [replies]
                else:
                    found = [await client.execute_command("HELLO")]
            except redis_errors.ResponseError as exc:  # Redis < 6.2: HELLO needs a protocol
                raise ConfigurationError(
                    f"this Redis does not answer HELLO ({exc}): leanmq_async needs Redis >= "
                    f"{'.'.join(map(str, MIN_REDIS_VERSION))}; upgrade the server"
                ) from exc
        version = min(_hello_version(reply) for reply in found)
        if version < MIN_REDIS_VERSION:
            raise ConfigurationError(
                f"Redis {'.'.join(map(str, version))} is not supported: leanmq_async needs "
                f"Redis >= {'.'.join(map(str, MIN_REDIS_VERSION))} (XINFO lag and "
                "entries-read, XAUTOCLAIM's deleted ids); upgrade the server"
            )
        self.server_version = version
        return version

    # -- operations (leanmq_async.ops): stats, DLQ tools, admin ---------------------------

    async def stats_snapshot(
        self, items: Sequence[QueueKeys]
    ) -> tuple[list[dict[str, Any]], float]:
        """What ``collect_stats`` needs for every queue pair, and the Redis clock (ms).

        One round trip for any number of queues: per pair ``XINFO STREAM … FULL COUNT 1``
        of the stream and of its DLQ (groups with lag and PEL count, the oldest pending
        entry, consumers with their seen-time, the first entry), ``ZCARD`` of the delayed
        set and ``HGETALL`` of the metadata; ``TIME`` last. ``"stream"``/``"dlq"`` are the
        parsed XINFO replies (None for a missing stream); a key of the wrong type is
        reported in ``"error"`` instead of failing the whole snapshot.
        """
        with translate_errors("stats"):
            async with self.client.pipeline(transaction=False) as pipe:
                for keys in items:
                    for stream in (keys.stream, keys.dlq):
                        pipe.execute_command("XINFO STREAM", stream, "FULL", "COUNT", 1, full=True)
                    pipe.zcard(keys.delayed)
                    pipe.hgetall(keys.meta)
                pipe.time()
                replies = await pipe.execute(raise_on_error=False)
            *body, now = replies
            if isinstance(now, Exception):
                raise now
            out: list[dict[str, Any]] = []
            for i in range(len(items)):
                replies_i = body[i * 4 : i * 4 + 4]
                errors = [
                    str(r)
                    for r in replies_i
                    if isinstance(r, Exception) and "no such key" not in str(r).lower()
                ]
                for r in replies_i:
                    if isinstance(r, Exception) and not isinstance(r, redis_errors.ResponseError):
                        raise r
                main_info, dlq_info, delayed, meta = (
                    None if isinstance(r, Exception) else r for r in replies_i
                )
                out.append(
                    {
                        "stream": main_info,
                        "dlq": dlq_info,
                        "delayed": int(delayed or 0),
                        "meta": {
                            k.decode(errors="replace"): v.decode(errors="replace")
                            for k, v in (meta or {}).items()
                        },
                        "error": "; ".join(errors) or None,
                    }
                )
        sec, usec = now
        return out, int(sec) * 1000 + int(usec) / 1000

    async def count_after(self, items: Sequence[tuple[str, str]], cap: int) -> list[int]:
        """For each ``(stream, id)``: entries after ``id``, counted in Redis up to ``cap``.

        One round trip (a pipeline of small EVALs; entries are paged inside Redis and never
        sent back). Used when XINFO reports no lag (deleted entries after the group's
        last-delivered id) to count what a group has still to read.
        """
        script = (
            "local n, start, cap = 0, '(' .. ARGV[1], tonumber(ARGV[2]) "
            "while n < cap do "
            "local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', "
            "math.min(1000, cap - n)) "
            "if #page == 0 then break end "
            "n = n + #page start = '(' .. page[#page][1] "
            "end return n"
        )
        if not items:
            return []
        with translate_errors("count entries"):
            async with self.client.pipeline(transaction=False) as pipe:
                for stream, after in items:
                    pipe.eval(script, 1, stream, after, cap)
                replies = await pipe.execute()
        return [int(r) for r in replies]

    async def pending_range(
        self, stream: str, group: str, count: int, min_idle_ms: int = 0, start: str = "-"
    ) -> list[dict[str, Any]]:
        """XPENDING (extended form, oldest first): id, consumer, idle ms and deliveries."""
        with translate_errors("XPENDING"):
            reply: Any = await self.client.xpending_range(
                stream, group, start, "+", count, idle=min_idle_ms
            )
        return [
            {
                "id": self._text(row["message_id"]),
                "consumer": self._text(row["consumer"]),
                "idle_ms": int(row["time_since_delivered"]),
                "deliveries": int(row["times_delivered"]),
            }
            for row in reply or []
        ]

    async def claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, ids: Sequence[str]
    ) -> list[RawEntry]:
        """XCLAIM the entries still idle ``min_idle_ms`` for ``consumer``; deleted ones are
        skipped (Redis 7 also drops them from the pending list)."""
        if not ids:
            return []
        with translate_errors("XCLAIM"):
            reply: Any = await self.client.xclaim(stream, group, consumer, min_idle_ms, list(ids))
        return [(sid, fields) for sid, fields in reply if sid is not None]

    async def redeliver(
        self, keys: QueueKeys, group: str, consumer: str, items: Sequence[tuple[str, int]]
    ) -> list[int]:
        """Re-add each owned ``(id, attempts)`` at the tail for ``group`` and ack the original.

        :data:`scripts.RETRY` with no delay, pipelined: per id 1 (redelivered), 0 (entry
        gone from the stream: acked) or -1 (no longer owned by ``consumer``: untouched).
        """
        calls = [self.retry_call(keys, group, consumer, sid, 0, n) for sid, n in items]
        results = await self.settle_many(calls) if calls else []
        for result in results:
            if isinstance(result, LeanMQError):
                raise result
        return cast(list[int], results)

    async def clear_queue(self, keys: QueueKeys, include_dlq: bool) -> tuple[int, int, int]:
        """Empty a queue (stream, delayed and expiry index) and optionally its DLQ, in one
        MULTI; groups are kept. Return ``(stream entries, delayed, DLQ entries)`` removed."""
        with translate_errors("clear queue"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zcard(keys.delayed)
                await self._purge(
                    keys=[keys.stream, keys.expiry, keys.delayed, keys.delayed_data],
                    args=["1"],
                    client=pipe,
                )
                pipe.delete(keys.dedup, keys.dedup_until)  # dedup records (issue 17)
                if include_dlq:
                    await self._purge(
                        keys=[keys.dlq, keys.dlq_expiry, keys.delayed, keys.delayed_data],
                        args=["0"],
                        client=pipe,
                    )
                replies = await pipe.execute()
        delayed, stream, _, *dlq = (int(r) for r in replies)
        return stream, delayed, dlq[0] if dlq else 0

    async def last_id(self, stream: str) -> str | None:
        """The id of the newest entry of ``stream`` (None when it is empty or missing)."""
        with translate_errors("XREVRANGE"):
            reply: Any = await self.client.xrevrange(stream, "+", "-", count=1)
        return self._text(reply[0][0]) if reply else None

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
