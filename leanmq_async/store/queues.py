"""A queue's life: create, inspect, empty and delete it, and its upkeep.

Upkeep: delayed entries that are due, expiry, trimming.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import redis.exceptions as redis_errors

from leanmq_async.cluster import queue_slot
from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import ConfigurationError, LeanMQError
from leanmq_async.keys import (
    DEFAULT_LEVEL,
    QueueKeys,
    legacy_registry_key,
    registry_key,
    validate_queue_name,
)
from leanmq_async.replies import (
    ExpireResult,
    parse_count,
    parse_due_scan,
    parse_expire,
    parse_move_due,
    text,
)
from leanmq_async.store.base import StoreBase

__all__ = ["QueueAdmin"]


def _is_queue_name(name: str) -> bool:
    """Could ``name`` be a queue of this library? (LeanMQ 0.2 members may be anything.)"""
    try:
        validate_queue_name(name)
    except ConfigurationError:
        return False
    return True


class QueueAdmin(StoreBase):
    """Queue-level operations of :class:`~leanmq_async.store.Store`."""

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
            await self.scripts.create_groups(keys=streams, args=groups)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hsetnx(keys.meta, "created_at", repr(time.time()))
                pipe.hsetnx(keys.meta, "consumer_group", group)
                pipe.hsetnx(keys.meta, "dlq_group", dlq_group)
                pipe.sadd(registry_key(prefix), keys.base)
                await pipe.execute()

    async def create_queues(self, prefix: str, items: Sequence[tuple[QueueKeys, str, str]]) -> None:
        """:meth:`create_queue` (``create_group=False``) for many ``(keys, group, dlq_group)``.

        Flat in their number: the DLQ groups in one script call (one per hash slot on a
        cluster), then the metadata and registry entries in one pipeline.
        """
        if not items:
            return
        await self.ensure_groups([k.dlq for k, _, _ in items], [d for _, _, d in items])
        with translate_errors("create queue"):
            async with self.client.pipeline(transaction=False) as pipe:
                for keys, group, dlq_group in items:
                    pipe.hsetnx(keys.meta, "created_at", repr(time.time()))
                    pipe.hsetnx(keys.meta, "consumer_group", group)
                    pipe.hsetnx(keys.meta, "dlq_group", dlq_group)
                    pipe.sadd(registry_key(prefix), keys.base)
                await pipe.execute()

    async def queues_exist(self, items: Sequence[tuple[QueueKeys, str]]) -> list[bool]:
        """:meth:`queue_exists` for many ``(keys, stream)`` pairs in one pipeline."""
        with translate_errors("EXISTS"):
            async with self.client.pipeline(transaction=False) as pipe:
                for keys, stream in items:
                    pipe.exists(keys.meta, stream)
                replies = await pipe.execute()
        return [int(r) == 2 for r in replies]

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
                reply = await self.scripts.create_groups(keys=keys, args=args)
                created += parse_count("create_groups", reply)
        return created

    async def queue_exists(self, keys: QueueKeys, stream: str | None = None) -> bool:
        """Was the pair created (its metadata exists), and does ``stream`` exist if given?"""
        with translate_errors("EXISTS"):
            if stream is None:
                return bool(await self.client.exists(keys.meta))
            return int(await self.client.exists(keys.meta, stream)) == 2

    async def registered_queues(self, prefix: str) -> list[str]:
        """The registry's queue names, with those an earlier version left in the old key.

        One round trip; two while the old key (LeanMQ 0.2's registry, see
        :func:`~leanmq_async.keys.legacy_registry_key`) has members: only those whose
        ``:meta`` hash exists are queues of this library. The others (LeanMQ 0.2's own
        queues) are counted in :attr:`legacy_registry_members`.
        """
        # --- migration from LeanMQ 0.2 (issue 15): the registry moved; read both names ---
        with translate_errors("SMEMBERS"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.smembers(registry_key(prefix))
                pipe.smembers(legacy_registry_key(prefix))  # not a set: an error, ignored
                current, old = await pipe.execute(raise_on_error=False)
            if isinstance(current, Exception):
                raise current
            names = {text(n) for n in current}
            extra = [] if isinstance(old, Exception) else [text(n) for n in old]
            extra = [n for n in extra if n not in names]
            candidates = [n for n in extra if _is_queue_name(n)]
            found: list[Any] = []
            if candidates:
                async with self.client.pipeline(transaction=False) as pipe:
                    for name in candidates:
                        pipe.exists(QueueKeys(prefix, name).meta)
                    found = await pipe.execute()
            ours = {n for n, hit in zip(candidates, found, strict=True) if hit}
            names.update(ours)
            self.legacy_registry_members = len(extra) - len(ours)
        return sorted(names)
        # --- end migration from LeanMQ 0.2 ---

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

    async def stream_infos(
        self, items: Sequence[tuple[str, QueueKeys]], *, levels: bool = False
    ) -> list[dict[str, Any]]:
        """XLEN, groups, metadata and delayed count for each ``(stream, keys)``: one round trip.

        ``levels``: a main stream's counts include its priority levels' (their length and
        delayed count added; their groups in ``"level_groups"``): a few more commands in
        the same round trip.
        """
        others = [k for k in QueueKeys("", "x").levels() if k.level != DEFAULT_LEVEL]
        with translate_errors("queue info"):
            async with self.client.pipeline(transaction=False) as pipe:
                for stream, keys in items:
                    pipe.xlen(stream)
                    pipe.xinfo_groups(stream)
                    pipe.hgetall(keys.meta)
                    pipe.zcard(keys.delayed)
                    if levels and stream == keys.stream:
                        for other in others:
                            level = keys.at(other.level)
                            pipe.xlen(level.stream)
                            pipe.xinfo_groups(level.stream)
                            pipe.zcard(level.delayed)
                replies = iter(await pipe.execute(raise_on_error=False))
        out: list[dict[str, Any]] = []
        for stream, keys in items:
            length, groups, meta, delayed = (next(replies) for _ in range(4))
            for reply in (length, meta, delayed):
                if isinstance(reply, Exception):
                    with translate_errors("queue info"):
                        raise reply
            # XLEN answered, so an XINFO error means the stream does not exist.
            missing = isinstance(groups, redis_errors.ResponseError)
            info = {
                "length": int(length),
                "exists": not missing,
                "groups": [] if missing else groups,
                "meta": {k.decode(): v.decode() for k, v in meta.items()},
                "delayed": int(delayed),
                "level_groups": [],
            }
            if levels and stream == keys.stream:
                for _ in others:
                    n, level_groups, waiting = next(replies), next(replies), next(replies)
                    for reply in (n, waiting):
                        if isinstance(reply, Exception):
                            with translate_errors("queue info"):
                                raise reply
                    info["length"] += int(n)
                    info["delayed"] += int(waiting)
                    if not isinstance(level_groups, Exception):
                        info["level_groups"].append(level_groups)
            out.append(info)
        return out

    async def purge(self, keys: QueueKeys, stream: str, include_delayed: bool) -> int:
        expiry = keys.expiry_of(stream)
        purge_keys = [stream, expiry, keys.delayed, keys.delayed_data]
        with translate_errors("purge"):
            if not include_delayed:
                reply = await self.scripts.purge(keys=purge_keys, args=["0"])
                return parse_count("purge", reply)
            # A main queue's dedup records go with it, in the same MULTI (issue 17).
            async with self.client.pipeline(transaction=True) as pipe:
                await self.scripts.purge(keys=purge_keys, args=["1"], client=pipe)
                pipe.delete(keys.dedup, keys.dedup_until)
                reply, _ = await pipe.execute()
        return parse_count("purge", reply)

    async def clear_queue(self, keys: QueueKeys, include_dlq: bool) -> tuple[int, int, int]:
        """Empty a queue (stream, delayed and expiry index) and optionally its DLQ, in one
        MULTI; groups are kept. Return ``(stream entries, delayed, DLQ entries)`` removed."""
        with translate_errors("clear queue"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zcard(keys.delayed)
                await self.scripts.purge(
                    keys=[keys.stream, keys.expiry, keys.delayed, keys.delayed_data],
                    args=["1"],
                    client=pipe,
                )
                pipe.delete(keys.dedup, keys.dedup_until)  # dedup records (issue 17)
                if include_dlq:
                    await self.scripts.purge(
                        keys=[keys.dlq, keys.dlq_expiry, keys.delayed, keys.delayed_data],
                        args=["0"],
                        client=pipe,
                    )
                delayed, stream, _, *dlq = await pipe.execute()
        dlq_removed = parse_count("purge", dlq[0]) if dlq else 0
        return parse_count("purge", stream), int(delayed), dlq_removed

    # -- upkeep --------------------------------------------------------------------------

    async def move_due(self, keys: QueueKeys, limit: int = 500) -> tuple[int, int]:
        """Move due delayed entries into the stream; return ``(moved, ms to next or -1)``."""
        move_keys = [keys.stream, keys.delayed, keys.delayed_data, keys.expiry]
        if keys.level != DEFAULT_LEVEL:  # a level stream it creates gets the queue's groups
            move_keys.append(keys.at(DEFAULT_LEVEL).stream)
        with translate_errors("move due"):
            reply = await self.scripts.move_due(keys=move_keys, args=[limit, self.clock_shift_ms])
        return parse_move_due(reply)

    async def move_due_many(
        self, items: Sequence[QueueKeys], limit: int = 500
    ) -> list[tuple[int, int] | LeanMQError]:
        """:meth:`move_due` for many queues in one pipeline; a failed one gives its error."""
        script = self.scripts.move_due
        with translate_errors("move due"):
            async with self.client.pipeline(transaction=False) as pipe:
                for keys in items:
                    move_keys = [keys.stream, keys.delayed, keys.delayed_data, keys.expiry]
                    if keys.level != DEFAULT_LEVEL:  # as in move_due
                        move_keys.append(keys.at(DEFAULT_LEVEL).stream)
                    await script(keys=move_keys, args=[limit, self.clock_shift_ms], client=pipe)
                replies = await pipe.execute(raise_on_error=False)
        out: list[tuple[int, int] | LeanMQError] = []
        for reply in replies:
            try:
                with translate_errors("move due"):
                    if isinstance(reply, Exception):
                        raise reply
                out.append(parse_move_due(reply))
            except LeanMQError as exc:
                out.append(exc)
        return out

    async def due_scan(self, zsets: Sequence[str]) -> tuple[int, list[int]]:
        """Over time-scored zsets (delayed sets, expiry indexes): ms until the soonest one
        not yet due is (-1: none), and the positions of those due now
        (``lua/due_scan.lua``). One call per 1,000 keys (and per hash slot on a cluster),
        however many queues; the reply is as long as the number due, not of keys."""
        batches: dict[int, list[int]] = {}
        for i, key in enumerate(zsets):
            batches.setdefault(queue_slot(key) if self.cluster else 0, []).append(i)
        soonest, due = -1, []
        with translate_errors("due scan"):
            for positions in batches.values():
                for at in range(0, len(positions), 1000):
                    part = positions[at : at + 1000]
                    keys = [zsets[i] for i in part]
                    if self.cluster:
                        reply = await self.scripts.due_scan(keys=keys, args=[self.clock_shift_ms])
                    else:
                        reply = await self._due_scan_packed(keys)
                    wait, due_here = parse_due_scan(reply, len(part))
                    if wait > 0 and (soonest < 0 or wait < soonest):
                        soonest = wait
                    due += [part[i] for i in due_here]
        return soonest, sorted(due)

    async def _due_scan_packed(self, keys: list[str]) -> Any:
        """One due_scan call whose command bytes are packed once per key list: a worker
        asks every ``maintenance_interval`` about the same thousand keys, and packing
        them anew costs more than the call."""
        script, shift = self.scripts.due_scan, self.clock_shift_ms
        cache: dict[tuple[str, ...], bytes] = self.__dict__.setdefault("_due_scan_cache", {})
        ident = tuple(keys)
        packed = cache.get(ident)
        pool = self.client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if packed is None:
                packed = b"".join(conn.pack_command("EVALSHA", script.sha, len(keys), *keys))
                # Several key lists take turns (a thousand keys per call, delayed sets and
                # expiry indexes): keep a few, not just the last one.
                if len(cache) >= _DUE_SCAN_CACHE:
                    cache.clear()
                cache[ident] = packed
            # The clock shift (0 in production) is the last argument, packed per call.
            arg = str(shift).encode()
            await conn.send_packed_command(
                _with_argc(packed, len(keys) + 4) + b"$%d\r\n%s\r\n" % (len(arg), arg)
            )
            try:
                return await conn.read_response()
            except redis_errors.NoScriptError:
                await conn.send_command("SCRIPT", "LOAD", script.script)
                await conn.read_response()
                return await self._due_scan_retry(conn, packed, len(keys), arg)
        except BaseException:
            # Cancelled or failed between a send and its reply: a reply may still be on
            # its way, so this connection must not serve anyone else.
            with anyio.CancelScope(shield=True):
                await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    @staticmethod
    async def _due_scan_retry(conn: Any, packed: bytes, keys: int, arg: bytes) -> Any:
        await conn.send_packed_command(
            _with_argc(packed, keys + 4) + b"$%d\r\n%s\r\n" % (len(arg), arg)
        )
        return await conn.read_response()

    async def expire(
        self,
        keys: QueueKeys,
        source_name: str,
        policy: str,
        limit: int,
        recheck_ms: int = 1000,
        group_policies: Mapping[str, str] | None = None,
    ) -> ExpireResult:
        """One bounded expiry batch (``lua/expire.lua``): remove (or dead-letter) up to
        ``limit`` expired entries pending in no group; re-check pending ones after
        ``recheck_ms``. ``group_policies`` overrides ``policy`` for the groups named."""
        args: list[Any] = [limit, policy, source_name, self.clock_shift_ms, recheck_ms]
        for group, group_policy in (group_policies or {}).items():
            args += [group, group_policy]
        with translate_errors("expire"):
            reply = await self.scripts.expire(keys=[keys.stream, keys.expiry, keys.dlq], args=args)
        return parse_expire(reply)

    async def trim(self, stream: str, max_age_ms: int) -> int:
        with translate_errors("trim"):
            reply = await self.scripts.trim(keys=[stream], args=[max_age_ms, self.clock_shift_ms])
        return parse_count("trim", reply)


_DUE_SCAN_CACHE = 32  # packed due_scan commands kept (each names up to 1,000 keys)


def _with_argc(packed: bytes, argc: int) -> bytes:
    """A packed command with its argument count replaced (an argument is appended)."""
    return b"*%d%s" % (argc, packed[packed.index(b"\r\n") :])
