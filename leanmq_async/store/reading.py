"""What a consumer does to get entries and hold them: read, ack, reclaim, keep leases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.exceptions as redis_errors

from leanmq_async.cluster import queue_slot
from leanmq_async.connection import translate_errors
from leanmq_async.keys import DEFAULT_LEVEL, QueueKeys
from leanmq_async.replies import (
    ReclaimResult,
    parse_claim,
    parse_delete_idle_consumer,
    parse_extend_leases,
    parse_move_due,
    parse_pending_scan,
    parse_reclaim,
    text,
)
from leanmq_async.store.base import ID_BATCH, StoreBase
from leanmq_async.store_types import RawEntry

__all__ = ["Reading"]

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


class Reading(StoreBase):
    """The reading and lease operations of :class:`~leanmq_async.store.Store`."""

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

        One round trip (``lua/move_due.lua`` pipelined before the read; on a cluster,
        two), so a reader without a worker sees delayed messages at their due time.
        Returns the entries and the ms until the next delayed entry is due (-1: none is
        waiting).
        """
        move_due = self.scripts.move_due
        move_keys = [keys.stream, keys.delayed, keys.delayed_data, keys.expiry]
        move_args = [_DUE_BATCH, self.clock_shift_ms]
        if self.cluster:
            with translate_errors("move due"):
                moved = parse_move_due(await move_due(keys=move_keys, args=move_args))
            entries = await self.read_group(keys.stream, group, consumer, count, block_ms)
            return entries, moved.next_due_ms
        with translate_errors("XREADGROUP"):
            if not self._move_due_loaded:
                await self.client.script_load(move_due.script)
                self._move_due_loaded = True
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.evalsha(move_due.sha, len(move_keys), *move_keys, *move_args)
                pipe.xreadgroup(group, consumer, {keys.stream: ">"}, count=count, block=block_ms)
                reply_moved, reply = await pipe.execute(raise_on_error=False)
            if isinstance(reply, Exception):
                raise reply
        entries = _read_entries(reply)
        if isinstance(reply_moved, Exception):
            # Entries read are handed out all the same (they are pending now); the
            # error shows again on a read that finds nothing.
            if entries:
                return entries, 0
            if isinstance(reply_moved, redis_errors.NoScriptError):
                # Redis lost its scripts (restarted): load it and read again.
                self._move_due_loaded = False
                return await self.read_after_due(keys, group, consumer, count, block_ms)
            with translate_errors("move due"):
                raise reply_moved
        return entries, parse_move_due(reply_moved).next_due_ms

    # -- priorities (see leanmq_async/priority.py) ------------------------------------------

    async def levels_in_use(self, keys: QueueKeys) -> bool:
        """Does a stream (or delayed set) of a priority level other than the default exist?"""
        others = [x for k in keys.levels() if k.level != DEFAULT_LEVEL for x in k.level_keys()]
        with translate_errors("EXISTS"):
            return bool(await self.client.exists(*others))

    async def claim_new(
        self,
        order: Sequence[QueueKeys],
        group: str,
        consumer: str,
        count: int,
        acks: Sequence[tuple[str, Sequence[bytes]]] = (),
    ) -> tuple[list[tuple[int, list[RawEntry]]], list[str]]:
        """Claim up to ``count`` new entries of one queue for ``group``, highest priority
        first (the levels in ``order``), without blocking: ``lua/claim.lua``.

        Returns ``(level, entries)`` per level read, and when nothing was claimed the
        streams' last ids (for :meth:`wait_levels`). ``acks``: ``(stream, ids)`` to XACK
        first, in the same round trip (on a cluster, in one of their own).
        """
        streams = [k.stream for k in order]
        main = next(i for i, k in enumerate(order) if k.level == DEFAULT_LEVEL) + 1
        args: list[str | int] = [group, consumer, count, main]
        with translate_errors("claim"):
            if acks and self.cluster:
                # redis-py's cluster pipeline refuses scripts: the acks go first, apart.
                for stream, ids in acks:
                    await self.client.xack(stream, group, *ids)
                reply = await self.scripts.claim(keys=streams, args=args)
            elif acks:
                # EVALSHA itself, not the script object: redis-py would send SCRIPT EXISTS
                # before every pipeline that runs a script (a round trip of its own).
                script = self.scripts.claim
                async with self.client.pipeline(transaction=False) as pipe:
                    for stream, ids in acks:
                        pipe.xack(stream, group, *ids)
                    pipe.evalsha(script.sha, len(streams), *streams, *args)
                    *acked, reply = await pipe.execute(raise_on_error=False)
                for r in acked:
                    if isinstance(r, Exception):
                        raise r
                if isinstance(reply, redis_errors.NoScriptError):
                    # Redis lost its scripts (restarted): the acks went; claim again.
                    reply = await script(keys=streams, args=args)
                elif isinstance(reply, Exception):
                    raise reply
            else:
                reply = await self.scripts.claim(keys=streams, args=args)
        claimed = parse_claim(reply, len(streams))
        return list(zip([k.level for k in order], claimed.entries, strict=True)), claimed.last_ids

    async def wait_levels(
        self, streams: Sequence[str], after: Sequence[str], block_ms: int
    ) -> bool:
        """Wait (XREAD BLOCK, consuming nothing) until one of ``streams`` has an entry after
        its id in ``after``, at most ``block_ms``; True when one has."""
        with translate_errors("XREAD"):
            reply = await self.client.xread(
                dict(zip(streams, after, strict=True)), count=1, block=block_ms
            )
        return bool(reply)

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

    async def last_id(self, stream: str) -> str | None:
        """The id of the newest entry of ``stream`` (None when it is empty or missing)."""
        with translate_errors("XREVRANGE"):
            reply: Any = await self.client.xrevrange(stream, "+", "-", count=1)
        return text(reply[0][0]) if reply else None

    # -- pending entries and leases ------------------------------------------------------

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
        """Claim idle pending entries (of ``owner`` only, if given); see ``lua/reclaim.lua``."""
        with translate_errors("reclaim"):
            reply = await self.scripts.reclaim(
                keys=[stream], args=[group, consumer, min_idle_ms, count, start, owner]
            )
        return parse_reclaim(reply)

    async def pending_scan(self, items: Sequence[tuple[str, str, int]]) -> list[bool]:
        """Per ``(stream, group, lease_ms)``: does the group hold an entry idle past the
        lease (``lua/pending_scan.lua``)? One call per 500 pairs (and per hash slot on a
        cluster), however many queues: a worker reclaims only where this says so."""
        batches: dict[int, list[int]] = {}
        for i, (stream, _, _) in enumerate(items):
            batches.setdefault(queue_slot(stream) if self.cluster else 0, []).append(i)
        out = [False] * len(items)
        with translate_errors("pending scan"):
            for positions in batches.values():
                for at in range(0, len(positions), 500):
                    part = positions[at : at + 500]
                    args: list[Any] = []
                    for i in part:
                        args += [items[i][1], items[i][2]]
                    reply = await self.scripts.pending_scan(
                        keys=[items[i][0] for i in part], args=args
                    )
                    for i, idle in zip(part, parse_pending_scan(reply, len(part)), strict=True):
                        out[i] = idle
        return out

    async def extend_leases(
        self, stream: str, group: str, consumer: str, ids: Sequence[bytes | str]
    ) -> list[bytes]:
        """Reset the idle time of entries still owned; return the ids whose lease was lost.

        Any number of ids: one script call per ``ID_BATCH`` of them.
        """
        lost: list[bytes] = []
        with translate_errors("extend leases"):
            for i in range(0, len(ids), ID_BATCH):
                batch = ids[i : i + ID_BATCH]
                reply = await self.scripts.extend_leases(
                    keys=[stream], args=[group, consumer, *batch]
                )
                lost += parse_extend_leases(reply)
        return lost

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
                "id": text(row["message_id"]),
                "consumer": text(row["consumer"]),
                "idle_ms": int(row["time_since_delivered"]),
                "deliveries": int(row["times_delivered"]),
            }
            for row in reply or []
        ]

    async def consumers(self, stream: str, group: str) -> list[dict[str, Any]]:
        """XINFO CONSUMERS: name, pending and idle time of each consumer of ``group``."""
        with translate_errors("XINFO CONSUMERS"):
            return list(await self.client.xinfo_consumers(stream, group))

    async def delete_consumer_if_idle(self, stream: str, group: str, consumer: str) -> bool:
        """Remove a consumer only if it holds no pending entries (never loses any)."""
        with translate_errors("XGROUP DELCONSUMER"):
            reply = await self.scripts.delete_idle_consumer(keys=[stream], args=[group, consumer])
        return parse_delete_idle_consumer(reply)
