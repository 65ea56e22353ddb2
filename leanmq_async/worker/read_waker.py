"""The wakers of a :class:`~leanmq_async.worker.read_hub.ReadHub`: who waits for news.

A :class:`HubMember` is one runner's place in the hub. A :class:`Waker` watches the
streams of up to a few hundred members with one non-consuming ``XREAD BLOCK COUNT 1`` on
a connection of its own, each stream from an explicit id (the newest entry its member
knows everything up to was delivered to its group; never ``$``), and marks the members
whose streams have newer entries ``dirty``: their runners then claim through the hub.
Nothing is consumed, so a read abandoned (shutdown) loses nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import LeanMQError

__all__ = ["HubMember", "StreamId", "Waker", "parse_id"]

StreamId = tuple[int, int]


def parse_id(sid: bytes | str) -> StreamId:
    """A stream id as a comparable ``(ms, seq)``."""
    text = sid.decode() if isinstance(sid, bytes) else sid
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class HubMember:
    """One runner's place in the hub: its stream, group and what it knows was delivered."""

    __slots__ = (
        "consumer",
        "dirty",
        "group",
        "last",
        "lease_ms",
        "level_keys",
        "levels",
        "news",
        "reclaim_due",
        "reclaim_interval",
        "shard",
        "stopped",
        "stream",
        "watching",
    )

    def __init__(
        self,
        stream: str,
        group: str,
        consumer: str,
        lease_ms: int = 0,
        reclaim_interval: float = 5.0,
        level_keys: tuple[str, ...] = (),
    ) -> None:
        self.stream = stream
        self.group = group
        self.consumer = consumer
        # dirty: new entries may be waiting (claim before waiting); watching: on the
        # waker's list (from its first claim on, unless it has a backlog); last: every
        # entry up to it was delivered to the group.
        self.dirty = True
        self.watching = False
        self.stopped = False
        self.last: StreamId = (0, 0)
        self.news = anyio.Event()
        self.shard = 0  # which of the hub's wakers watches it
        self.lease_ms = lease_ms
        self.reclaim_interval = reclaim_interval
        self.reclaim_due = anyio.Event()  # the hub's scan found entries idle past the lease
        # Priorities: the keys of the queue's other levels; once one exists (``levels``)
        # the runner leaves the hub and reads its levels itself (the fetcher's own loop).
        self.level_keys = level_keys
        self.levels = False

    async def wait(self, limit: float | None = None) -> None:
        """Wait until new entries may be waiting (or stop, or ``limit`` seconds)."""
        if self.dirty or self.stopped:
            return
        if self.news.is_set():
            self.news = anyio.Event()
        with anyio.move_on_after(limit):
            await self.news.wait()

    async def wait_reclaim(self) -> None:
        """Wait until the hub's scan finds entries to reclaim (or stop)."""
        if not self.stopped:
            await self.reclaim_due.wait()
        self.reclaim_due = anyio.Event()

    def stop(self) -> None:
        """Leave the watch list for good and wake a waiting fetch or reclaim loop."""
        self.stopped = True
        self.watching = False
        self.news.set()
        self.reclaim_due.set()


class Waker:
    """One wake-up read over the streams of its members; see the module docstring."""

    def __init__(
        self,
        client: aioredis.Redis,
        block_ms: int,
        log: Any,
        round_in_flight: Callable[[], anyio.Event | None],
    ) -> None:
        self.client = client
        self.block_ms = block_ms
        self.log = log
        self.round_in_flight = round_in_flight
        self.members: list[HubMember] = []
        self.joined = anyio.Event()  # a member started watching while the waker idled
        self.waker_id = 0
        self.blocked = False  # a read is in flight
        self.wakeups = 0  # reads that came back with news
        self._packed_keys: dict[str, bytes] = {}
        self._packed_ids: dict[str, tuple[StreamId, bytes]] = {}

    async def unblock(self) -> None:
        """Make the waker read again with the runners that just started watching.

        Rare: at start, and when a backlog is cleared. A read sent but not blocked yet
        when the UNBLOCK arrives is unblocked by one more, a moment later.
        """
        for _ in range(5):
            if not self.blocked:
                return  # between reads: the next one has them
            try:
                with translate_errors("CLIENT UNBLOCK"):
                    done = int(await self.client.client_unblock(self.waker_id))
            except LeanMQError as exc:
                self.log.warning("shared_read_unblock_failed", error=str(exc))
                return
            if done:
                return
            await anyio.sleep(0.001)

    # -- reading -----------------------------------------------------------------------

    async def run(self) -> None:
        """Read, wake, read again, until cancelled."""
        conn: Any = None
        failures = 0
        try:
            while True:
                watch = [m for m in self.members if m.watching]
                if not watch:
                    self.joined = anyio.Event()
                    await self.joined.wait()
                    continue
                since: dict[str, StreamId] = {}
                for m in watch:
                    last = since.get(m.stream)
                    since[m.stream] = m.last if last is None else min(last, m.last)
                try:
                    if conn is None:
                        conn = await self._connect()
                        continue  # runners may have started watching meanwhile
                    self.blocked = True
                    try:
                        await conn.send_packed_command(self._pack_read(since), check_health=False)
                        reply = await conn.read_response()
                    finally:
                        self.blocked = False
                except (redis_errors.RedisError, OSError) as exc:
                    failures += 1
                    self.log.warning("shared_read_failed", error=str(exc))
                    if conn is not None:
                        await self._close(conn)
                        conn = None
                    # The runners claim now: their own errors go through their Recovery.
                    self._wake(watch, None)
                    await anyio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)))
                    continue
                failures = 0
                in_flight = self.round_in_flight()
                if in_flight is not None:
                    # Runners that start watching in that round join the next read.
                    await in_flight.wait()
                if reply:
                    self.wakeups += 1
                    self._wake(watch, _newest(reply))
                    # The runners woken and the claimer go first: their claim starts
                    # handlers, this waker's next read (packing its streams) can wait.
                    for _ in range(3):
                        await anyio.lowlevel.checkpoint()
        finally:
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await self._close(conn)

    async def _connect(self) -> Any:
        """A connection of the waker's own, out of the pool (it blocks in reads)."""
        conn = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command("CLIENT", "ID")
            self.waker_id = int(await conn.read_response())
        except BaseException:
            await self._close(conn)
            raise
        return conn

    def _pack_read(self, since: dict[str, StreamId]) -> bytes:
        """``XREAD COUNT 1 BLOCK ms STREAMS ...``, packed here: redis-py's packing of a
        command of thousands of arguments costs milliseconds; this costs microseconds."""
        keys_cache, ids_cache = self._packed_keys, self._packed_ids
        keys: list[bytes] = []
        ids: list[bytes] = []
        for stream, last in since.items():
            key = keys_cache.get(stream)
            if key is None:
                raw = stream.encode()
                key = keys_cache[stream] = b"$%d\r\n%s\r\n" % (len(raw), raw)
            keys.append(key)
            cached = ids_cache.get(stream)
            if cached is None or cached[0] != last:
                sid = b"%d-%d" % last
                cached = ids_cache[stream] = (last, b"$%d\r\n%s\r\n" % (len(sid), sid))
            ids.append(cached[1])
        block = b"%d" % self.block_ms
        head = b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$1\r\n1\r\n$5\r\nBLOCK\r\n" % (
            2 * len(keys) + 6
        )
        return b"".join(
            [head, b"$%d\r\n%s\r\n$7\r\nSTREAMS\r\n" % (len(block), block), *keys, *ids]
        )

    @staticmethod
    def _wake(watch: list[HubMember], news: dict[str, StreamId] | None) -> None:
        for m in watch:
            if not m.watching:
                continue
            top = None if news is None else news.get(m.stream)
            if news is None or (top is not None and top > m.last):
                # It stays on the list, watching from the newest id seen: its claim
                # needs no new read of the waker, and a later entry wakes it again.
                if top is not None:
                    m.last = top
                m.dirty = True
                m.news.set()

    async def _close(self, conn: Any) -> None:
        # A read abandoned mid-way leaves the connection unusable: drop it.
        with contextlib.suppress(redis_errors.RedisError, OSError):
            await conn.disconnect()
        await self.client.connection_pool.release(conn)


def _newest(reply: Any) -> dict[str, StreamId]:
    """Per stream, the id of the entry a raw XREAD reply carries (RESP2 or RESP3)."""
    pairs = reply.items() if isinstance(reply, dict) else reply
    news: dict[str, StreamId] = {}
    for stream, entries in pairs:
        if entries:
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            news[name] = parse_id(entries[-1][0])
    return news
