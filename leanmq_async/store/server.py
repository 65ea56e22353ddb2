"""Questions about the server: version, memory, liveness, and the stats snapshot.

The snapshot is one round trip; the stats are computed from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.exceptions as redis_errors

from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import ConfigurationError
from leanmq_async.keys import LEVELS, QueueKeys
from leanmq_async.replies import parse_count
from leanmq_async.scripts import source
from leanmq_async.store.base import StoreBase, chunked
from leanmq_async.store_types import MemoryUsage

__all__ = ["MIN_REDIS_VERSION", "ServerInfo"]

MIN_REDIS_VERSION = (7, 0)
"""The oldest Redis (or Valkey) server leanmq_async runs on."""


def _per_node(replies: Any) -> bool:
    """Is this a cluster's ``{node name: reply}`` (not one RESP3 HELLO map)?"""
    return isinstance(replies, dict) and b"version" not in replies and "version" not in replies


def _hello_version(reply: Any) -> tuple[int, ...]:
    """``(7, 0, 15)`` from a HELLO reply (a map under RESP3, a flat list under RESP2)."""
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    raw = fields.get(b"version", fields.get("version", b"0"))
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


class ServerInfo(StoreBase):
    """The server and stats operations of :class:`~leanmq_async.store.Store`."""

    async def ping(self) -> bool:
        with translate_errors("PING"):
            return bool(await self.client.ping())

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
                    f"{_version_text(MIN_REDIS_VERSION)}; upgrade the server"
                ) from exc
        version = min(_hello_version(reply) for reply in found)
        if version < MIN_REDIS_VERSION:
            raise ConfigurationError(
                f"Redis {_version_text(version)} is not supported: leanmq_async needs "
                f"Redis >= {_version_text(MIN_REDIS_VERSION)} (XINFO lag and "
                "entries-read, XAUTOCLAIM's deleted ids); upgrade the server"
            )
        self.server_version = version
        return version

    # -- for leanmq_async.ops: stats -------------------------------------------------------

    async def stats_snapshot(
        self, items: Sequence[QueueKeys]
    ) -> tuple[list[dict[str, Any]], float]:
        """What ``collect_stats`` needs for every queue pair, and the Redis clock (ms).

        One round trip for any number of queues: per pair ``XINFO STREAM … FULL COUNT 1``
        of the stream and of its DLQ (groups with lag and PEL count, the oldest pending
        entry, consumers with their seen-time, the first entry), ``ZCARD`` of the delayed
        set and ``HGETALL`` of the metadata, and per priority level ``XLEN``, ``XINFO
        GROUPS`` and ``ZCARD`` (``"levels"``); ``TIME`` last. ``"stream"``/``"dlq"`` are the
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
                    for level in keys.levels():
                        if level.level != keys.level:
                            pipe.xlen(level.stream)
                            pipe.xinfo_groups(level.stream)
                            pipe.zcard(level.delayed)
                pipe.time()
                replies = await pipe.execute(raise_on_error=False)
            *body, now = replies
            if isinstance(now, Exception):
                raise now
            width = 4 + 3 * (len(LEVELS) - 1)
            out = [_snapshot_of(per_queue) for per_queue in chunked(body, width)]
        sec, usec = now
        return out, int(sec) * 1000 + int(usec) / 1000

    async def count_after(self, items: Sequence[tuple[str, str]], cap: int) -> list[int]:
        """For each ``(stream, id)``: entries after ``id``, counted in Redis up to ``cap``.

        One round trip: a pipeline of ``lua/count_after.lua`` calls (entries are paged
        inside Redis and never sent back). Sent with EVAL, not EVALSHA, so the round trip
        stays one even on a server that has not loaded the script. Used when XINFO
        reports no lag (deleted entries after the group's last-delivered id) to count
        what a group has still to read.
        """
        if not items:
            return []
        script = source("count_after")  # the registered script's text
        with translate_errors("count entries"):
            async with self.client.pipeline(transaction=False) as pipe:
                for stream, after in items:
                    pipe.eval(script, 1, stream, after, cap)
                replies = await pipe.execute()
        return [parse_count("count_after", r) for r in replies]


def _snapshot_of(replies: tuple[Any, ...]) -> dict[str, Any]:
    """One queue pair's part of :meth:`ServerInfo.stats_snapshot` (its replies)."""
    errors = [
        str(r) for r in replies if isinstance(r, Exception) and "no such key" not in str(r).lower()
    ]
    for r in replies:
        if isinstance(r, Exception) and not isinstance(r, redis_errors.ResponseError):
            raise r
    main_info, dlq_info, delayed, meta, *rest = (
        None if isinstance(r, Exception) else r for r in replies
    )
    # Priority levels (priority.py): length, groups (name, pending, lag) and delayed count.
    levels = [
        {"length": int(n or 0), "groups": groups or [], "delayed": int(waiting or 0)}
        for n, groups, waiting in chunked(rest, 3)
    ]
    return {
        "levels": levels,
        "stream": main_info,
        "dlq": dlq_info,
        "delayed": int(delayed or 0),
        "meta": {
            k.decode(errors="replace"): v.decode(errors="replace") for k, v in (meta or {}).items()
        },
        "error": "; ".join(errors) or None,
    }
