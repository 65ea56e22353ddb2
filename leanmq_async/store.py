"""The one module that sends commands to Redis.

:class:`Store` wraps a ``redis.asyncio`` client and offers each queue operation as one
call: one command, one pipeline or one script, so a reader can count round trips here.
Every redis-py error is translated by :func:`~leanmq_async.connection.translate_errors`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import anyio
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.commands.core import AsyncScript

from leanmq_async import scripts
from leanmq_async.cluster import (
    AnyRedis,
    Durability,
    check_one_slot,
    is_cluster,
    queue_slot,
    write_and_wait,
)
from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import LeanMQError
from leanmq_async.keys import QueueKeys, registry_key

__all__ = ["MemoryUsage", "RawEntry", "ReclaimResult", "SendOp", "SettleCall", "Store"]

# Ids per script call where a caller passes any number (leases, requeues): bounded work
# per call (the scripts also slice what they unpack; Lua's unpack fails at ~8,000).
_ID_BATCH = 1000

RawEntry = tuple[bytes, dict[bytes, bytes] | None]
"""A stream entry as Redis returns it: ``(stream id, fields)``; fields are None if deleted."""


class SendOp:
    """One message to write: which queue, the encoded envelope, TTL and delay (ms)."""

    __slots__ = ("body", "delay_ms", "field", "keys", "member", "ttl_ms")

    def __init__(
        self,
        keys: QueueKeys,
        field: bytes,
        body: bytes,
        ttl_ms: int = 0,
        delay_ms: int = 0,
        member: str = "",
    ) -> None:
        self.keys = keys
        self.field = field
        self.body = body
        self.ttl_ms = ttl_ms
        self.delay_ms = delay_ms
        self.member = member


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
    """One settling script call (retry or dead-letter), to run in a batch."""

    __slots__ = ("args", "keys", "script")

    def __init__(self, script: AsyncScript, keys: list[str], args: list[Any]) -> None:
        self.script = script
        self.keys = keys
        self.args = args


def _pairs_to_dict(flat: Sequence[Any]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


class Store:
    """Queue operations on one Redis client (owned or borrowed)."""

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
        self._reclaim = register(scripts.RECLAIM)
        self._extend = register(scripts.EXTEND_LEASES)
        self._trim = register(scripts.TRIM)
        self._purge = register(scripts.PURGE)
        self._create_groups = register(scripts.CREATE_GROUPS)
        self._delete_idle_consumer = register(scripts.DELETE_IDLE_CONSUMER)
        self._clock_offset_ms = 0.0
        self._clock_synced_at = -1e18
        # Moves the clock every time decision uses (the scripts' and redis_now_ms) forward
        # by this many ms. Always 0 in production; a test sets it to let time pass at once.
        self.clock_shift_ms = 0

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
        """Measure the offset between this machine's clock and Redis's."""
        with translate_errors("TIME"):
            before = time.time()
            sec, usec = await self.client.time()
            after = time.time()
        redis_ms = sec * 1000 + usec / 1000
        self._clock_offset_ms = redis_ms - (before + after) * 500
        self._clock_synced_at = time.monotonic()

    async def redis_now_ms(self, max_age: float = 60.0) -> float:
        """The Redis clock in ms, estimated locally (re-measured every ``max_age`` s)."""
        if time.monotonic() - self._clock_synced_at > max_age:
            await self.sync_clock()
        return time.time() * 1000 + self._clock_offset_ms + self.clock_shift_ms

    # -- queues --------------------------------------------------------------------------

    async def create_queue(self, prefix: str, keys: QueueKeys, group: str, dlq_group: str) -> None:
        """Create both streams with their groups, the metadata and the registry entry.

        Two round trips: the groups first, so a key of the wrong type fails the call
        before the queue is registered.
        """
        with translate_errors("create queue"):
            await self._create_groups(keys=[keys.stream, keys.dlq], args=[group, dlq_group])
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
        with translate_errors("purge"):
            return int(
                await self._purge(
                    keys=[stream, expiry, keys.delayed, keys.delayed_data],
                    args=["1" if include_delayed else "0"],
                )
            )

    # -- sending -------------------------------------------------------------------------

    async def xadd(
        self, stream: str, field: bytes, body: bytes, durability: Durability | None = None
    ) -> str:
        """The fast path: one plain XADD, for a message without TTL or delay.

        ``durability`` (default: the store's) waits for replicas after the write.
        """
        if durability is None:
            durability = self.durability
        with translate_errors("XADD"):
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
            args += [index, op.ttl_ms, op.delay_ms, op.field, op.body, op.member]
        args.append(self.clock_shift_ms)
        with translate_errors("send"):
            if durability is not None:
                command = ("EVALSHA", self._send.sha, len(keys), *keys, *args)
                ids = await write_and_wait(self.client, keys[0], command, durability, self._send)
            else:
                ids = await self._send(keys=keys, args=args)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

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
        if not reply:
            return []
        # RESP2 returns [[stream, entries]]; RESP3 returns {stream: [entries]}.
        if isinstance(reply, dict):
            return list(next(iter(reply.values()))[0])
        return list(reply[0][1])

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
    ) -> int:
        """Move ``(id, reason, error_type, traceback, attempts)`` items to the DLQ atomically.

        With ``consumer`` set, only entries this consumer still owns are moved.
        """
        args: list[Any] = [group, consumer, source_name, len(items)]
        for item in items:
            args.extend(item)
        with translate_errors("move to DLQ"):
            return int(await self._dead_letter(keys=[keys.stream, keys.dlq], args=args))

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
        """:meth:`dead_letter` of one item as one call of a :meth:`settle_many` batch."""
        args = [group, consumer, source_name, 1, *item]
        return SettleCall(self._dead_letter, [keys.stream, keys.dlq], args)

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
        for reply in replies:
            if isinstance(reply, Exception):
                try:
                    with translate_errors("settle"):
                        raise reply
                except LeanMQError as exc:
                    results.append(exc)
            else:
                results.append(int(reply))
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
        self, keys: QueueKeys, source_name: str, policy: str, limit: int, count: str = "removed"
    ) -> int:
        """Remove expired entries; return how many were removed (``count="unhandled"``:
        how many of them no group had handled)."""
        with translate_errors("expire"):
            return int(
                await self._expire(
                    keys=[keys.stream, keys.expiry, keys.dlq],
                    args=[limit, policy, source_name, count, self.clock_shift_ms],
                )
            )

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
                if include_dlq:
                    await self._purge(
                        keys=[keys.dlq, keys.dlq_expiry, keys.delayed, keys.delayed_data],
                        args=["0"],
                        client=pipe,
                    )
                replies = await pipe.execute()
        delayed, stream, *dlq = (int(r) for r in replies)
        return stream, delayed, dlq[0] if dlq else 0

    async def last_id(self, stream: str) -> str | None:
        """The id of the newest entry of ``stream`` (None when it is empty or missing)."""
        with translate_errors("XREVRANGE"):
            reply: Any = await self.client.xrevrange(stream, "+", "-", count=1)
        return self._text(reply[0][0]) if reply else None

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
