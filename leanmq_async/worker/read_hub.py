"""Shared reads for a worker with many handlers: one wake-up read, one claim pipeline.

A worker with a few handlers gives each its own blocking XREADGROUP (the fast path of
:mod:`leanmq_async.worker.fetcher`). With many (hundreds of queues, or a queue of many
partitions), that would hold one connection per idle handler. Instead the runners of
such a worker share a :class:`ReadHub`, whose cost does not grow with idle queues:

* **the waker**: one non-consuming ``XREAD BLOCK COUNT 1`` on a connection of its own
  over the streams of the runners that wait for news (they have free slots and their last
  claim came back short). Each runner watches from an explicit id (never ``$``, which
  misses entries added between two reads): the newest entry it knows all earlier
  entries of were delivered to its group. A reply wakes the runners whose streams have
  newer entries; nothing is consumed, so cancelling it loses nothing;
* **the claimer**: the woken runners, and runners with a backlog, each ask
  :meth:`ReadHub.claim_new` for up to ``n`` (their free slots) new entries. Every request
  waiting when a round starts goes in ONE pipeline: per runner its buffered XACK, an
  ``XREVRANGE + - COUNT 1`` (the newest id before the claim) and a non-blocking
  XREADGROUP in its own group. A claim that came back short puts its runner back on the
  watch list from that id; a full one keeps the runner claiming without waiting, so a
  backlog on one queue does not starve the others (each round serves every runner
  asking). Acks without a read and reclaim steps ride in the same rounds;
* **the reclaim scanner**: every reclaim interval one ``lua/pending_scan.lua`` call (per
  500 runners) asks which groups hold entries idle past their lease; only those runners
  run a reclaim step.

Connections: one per waker (a waker per ``_SHARD_SIZE`` streams, at most ``_MAX_SHARDS``),
and one for the claim round in flight. When a runner starts
watching while the waker is blocked, the round ends with ``CLIENT UNBLOCK`` of the waker
(it then reads again with the longer list). On Redis Cluster a multi-key read must stay
in one slot: a worker there keeps the per-runner loops (see ``WorkerSettings.shared_reads``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import redis.exceptions as redis_errors

from leanmq_async._log import get_logger
from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import LeanMQConnectionError, LeanMQError
from leanmq_async.replies import ReclaimResult, parse_reclaim
from leanmq_async.store.reading import _read_entries

if TYPE_CHECKING:
    from leanmq_async.store import RawEntry, Store

__all__ = ["HubMember", "ReadHub"]

# Requests per pipeline: a round with every runner of a large worker stays bounded.
_ROUND_MAX = 1000
# Reclaim scans per round at most (the rest go in the next rounds).
_SCANS_PER_ROUND = 50
# Streams per waker, and wakers at most: news on one stream makes its waker read again,
# at a cost (Redis's and ours) that grows with the streams of that read.
_SHARD_SIZE = 250
_MAX_SHARDS = 4
StreamId = tuple[int, int]


def _parse_id(sid: bytes | str) -> StreamId:
    text = sid.decode() if isinstance(sid, bytes) else sid
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _error(exc: BaseException, what: str) -> LeanMQError:
    """``exc`` as the library's exception (a redis-py one translated)."""
    if isinstance(exc, LeanMQError):
        return exc
    try:
        with translate_errors(what):
            raise exc
    except LeanMQError as translated:
        return translated
    except BaseException:  # not a Redis error: report it as one anyway
        return LeanMQError(f"{what} failed: {exc}")


class HubMember:
    """One runner's place in the hub: its stream, group and what it knows was delivered."""

    __slots__ = (
        "consumer",
        "dirty",
        "group",
        "last",
        "lease_ms",
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

    async def wait(self, timeout: float | None = None) -> None:
        """Wait until new entries may be waiting (or stop, or ``timeout``)."""
        if self.dirty or self.stopped:
            return
        if self.news.is_set():
            self.news = anyio.Event()
        with anyio.move_on_after(timeout):
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


class _Shard:
    """One waker: its members, its connection's client id, whether its read blocks."""

    __slots__ = ("blocked", "joined", "members", "waker_id")

    def __init__(self) -> None:
        self.members: list[HubMember] = []
        self.joined = anyio.Event()  # a member started watching while the waker idled
        self.waker_id = 0
        self.blocked = False  # a read is in flight


class _Request:
    __slots__ = ("acks", "args", "done", "error", "kind", "member", "n", "reply", "taken")

    def __init__(
        self, kind: str, member: HubMember, n: int = 0, acks: Sequence[bytes] = ()
    ) -> None:
        self.kind = kind  # "claim", "ack" or "reclaim"
        self.member = member
        self.n = n
        self.acks = acks
        self.args: list[Any] = []
        self.done = anyio.Event()
        self.taken = False
        self.reply: Any = None
        self.error: LeanMQError | None = None


class ReadHub:
    """The shared waker and claimer of one worker's runners; see the module docstring."""

    def __init__(self, store: Store, block_ms: int) -> None:
        self.store = store
        self.client = store.client
        self.block_ms = max(1, min(block_ms, 1000))
        self.members: list[HubMember] = []
        self.log = get_logger("leanmq_async.worker")
        self._requests: list[_Request] = []
        self._requested = anyio.Event()
        self._shards: list[_Shard] = []
        self._round: anyio.Event | None = None  # a claim round in flight
        self._packed_keys: dict[str, bytes] = {}
        self._packed_ids: dict[str, tuple[StreamId, bytes]] = {}
        self.rounds = 0  # claim rounds sent (tests and benchmarks count them)
        self.wakeups = 0  # waker reads that came back with news

    def join(
        self, stream: str, group: str, consumer: str, lease_ms: int, reclaim_interval: float
    ) -> HubMember:
        """A runner's member; it claims once at start (``dirty``), then watches."""
        member = HubMember(stream, group, consumer, lease_ms, reclaim_interval)
        self.members.append(member)
        return member

    async def run(self) -> None:
        """Run the wakers and the claimer until cancelled."""
        count = min(_MAX_SHARDS, -(-len(self.members) // _SHARD_SIZE)) or 1
        self._shards = [_Shard() for _ in range(count)]
        for i, member in enumerate(self.members):
            member.shard = i % count
            self._shards[member.shard].members.append(member)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._claimer)
            tg.start_soon(self._reclaim_scanner)
            for shard in self._shards:
                tg.start_soon(self._waker, shard)

    # -- requests of the runners ---------------------------------------------------------

    async def claim_new(
        self, member: HubMember, n: int, acks: Sequence[bytes] = ()
    ) -> list[RawEntry] | None:
        """Claim up to ``n`` new entries for ``member``'s runner (XREADGROUP ``>``).

        ``acks`` are XACKed first in the same round. None when the runner stopped before
        the round took the request (nothing was read). The one step of reading new
        entries for a runner: a claim of another shape plugs in here.
        """
        request = _Request("claim", member, n, acks)
        reply = await self._submit(request)
        if reply is None:
            return None
        entries: list[RawEntry] = reply
        return entries

    async def ack(self, stream: str, group: str, ids: Sequence[bytes | str]) -> int:
        """XACK ``ids`` in the next round (the settler's acks when no claim carries them)."""
        member = HubMember(stream, group, "")
        request = _Request(
            "ack", member, acks=[i if isinstance(i, bytes) else i.encode() for i in ids]
        )
        await self._submit(request, withdrawable=False)
        return int(request.reply or 0)

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
        """A reclaim step (``lua/reclaim.lua``) in the next round; as ``Store.reclaim``."""
        request = _Request("reclaim", HubMember(stream, group, consumer))
        request.args = [group, consumer, min_idle_ms, count, start, owner]
        reply = await self._submit(request, withdrawable=False)
        if isinstance(reply, redis_errors.NoScriptError):
            # Redis lost its scripts (restarted): the direct call loads it.
            return await self.store.reclaim(
                stream, group, consumer, min_idle_ms, count, start, owner
            )
        return parse_reclaim(reply)

    def withdraw(self, member: HubMember) -> None:
        """Drop ``member``'s claim requests no round took yet (its runner stops)."""
        for request in [r for r in self._requests if r.member is member and r.kind == "claim"]:
            self._requests.remove(request)
            request.done.set()

    async def _submit(self, request: _Request, *, withdrawable: bool = True) -> Any:
        self._requests.append(request)
        self._requested.set()
        if withdrawable:
            await request.done.wait()
        else:
            # Shielded: an ack or a reclaim sent must have its reply read.
            with anyio.CancelScope(shield=True):
                await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.reply

    async def _reclaim_scanner(self) -> None:
        """Every reclaim interval, one scan of every runner's pending list (one script
        call per 500): only the runners whose group holds entries idle past their lease
        run a reclaim scan. An idle worker thus costs one call per interval, not one per
        queue."""
        interval = min((m.reclaim_interval for m in self.members), default=5.0)
        while True:
            await anyio.sleep(interval)
            members = [m for m in self.members if not m.stopped]
            try:
                found = await self.store.pending_scan(
                    [(m.stream, m.group, m.lease_ms) for m in members]
                )
            except LeanMQError as exc:
                self.log.warning("reclaim_scan_failed", error=str(exc))
                continue
            for member, idle in zip(members, found, strict=True):
                if idle:
                    member.reclaim_due.set()

    # -- the claimer ---------------------------------------------------------------------

    async def _claimer(self) -> None:
        while True:
            await self._requested.wait()
            self._requested = anyio.Event()
            while self._requests:
                # Claims and acks first; reclaim scans (every runner's, every interval)
                # a bounded number per round, so a claim never waits behind all of them.
                batch: list[_Request] = []
                later: list[_Request] = []
                scans = 0
                for request in self._requests:
                    if len(batch) >= _ROUND_MAX or (
                        request.kind == "reclaim" and scans >= _SCANS_PER_ROUND
                    ):
                        later.append(request)
                        continue
                    scans += request.kind == "reclaim"
                    batch.append(request)
                self._requests = later
                with anyio.CancelScope(shield=True):
                    await self._round_trip(batch)

    async def _round_trip(self, batch: list[_Request]) -> None:
        self._round = round_done = anyio.Event()
        try:
            for request in batch:
                request.taken = True
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for request in batch:
                        self._queue(pipe, request)
                    replies = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the whole round failed (Redis away)
                error = _error(exc, "XREADGROUP")
                for request in batch:
                    request.error = error
                return
            self.rounds += 1
            joined = self._deliver(batch, replies)
        finally:
            self._round = None
            round_done.set()
            for request in batch:
                request.done.set()
        for i in joined:
            await self._unblock_waker(self._shards[i])

    def _queue(self, pipe: Any, request: _Request) -> None:
        member = request.member
        if request.kind == "reclaim":
            pipe.evalsha(self.store.scripts.reclaim.sha, 1, member.stream, *request.args)
            return
        if request.acks:
            pipe.xack(member.stream, member.group, *request.acks)
        if request.kind == "claim":
            pipe.xrevrange(member.stream, "+", "-", count=1)
            pipe.xreadgroup(member.group, member.consumer, {member.stream: ">"}, count=request.n)

    def _deliver(self, batch: list[_Request], replies: list[Any]) -> set[int]:
        """Hand each request its replies; the shards where a runner started watching."""
        at, joined = 0, set()
        for request in batch:
            member = request.member
            if request.kind == "reclaim":
                reply = replies[at]
                at += 1
                if isinstance(reply, Exception) and not isinstance(
                    reply, redis_errors.NoScriptError
                ):
                    request.error = _error(reply, "reclaim")
                request.reply = reply
                continue
            acked: Any = 0
            if request.acks:
                acked = replies[at]
                at += 1
                if isinstance(acked, Exception):
                    request.error = _error(acked, "XACK")
            request.reply = acked
            if request.kind != "claim":
                continue
            top, read = replies[at], replies[at + 1]
            at += 2
            for reply in (top, read):
                if isinstance(reply, Exception) and request.error is None:
                    request.error = _error(reply, "XREADGROUP")
            if request.error is not None:
                member.dirty = True
                continue
            entries = _read_entries(read)
            request.reply = entries
            newest = max(
                member.last,
                _parse_id(top[0][0]) if top else (0, 0),
                _parse_id(entries[-1][0]) if entries else (0, 0),
            )
            member.last = newest
            if len(entries) >= request.n:
                # A backlog: claim again once slots are free, off the watch list (news
                # of every entry added meanwhile would only wake the waker for nothing).
                member.dirty = True
                member.watching = False
            elif not member.watching and not member.stopped:
                member.watching = True
                joined.add(member.shard)
        for i in joined:
            self._shards[i].joined.set()
        return joined

    async def _unblock_waker(self, shard: _Shard) -> None:
        """Make the waker read again with the runners that just started watching.

        Rare: at start, and when a backlog is cleared. A read sent but not blocked yet
        when the UNBLOCK arrives is unblocked by one more, a moment later.
        """
        for _ in range(5):
            if not shard.blocked:
                return  # between reads: the next one has them
            try:
                with translate_errors("CLIENT UNBLOCK"):
                    done = int(await self.client.client_unblock(shard.waker_id))
            except LeanMQError as exc:
                self.log.warning("shared_read_unblock_failed", error=str(exc))
                return
            if done:
                return
            await anyio.sleep(0.001)

    # -- the waker -----------------------------------------------------------------------

    async def _waker(self, shard: _Shard) -> None:
        conn: Any = None
        failures = 0
        try:
            while True:
                watch = [m for m in shard.members if m.watching]
                if not watch:
                    shard.joined = anyio.Event()
                    await shard.joined.wait()
                    continue
                since: dict[str, StreamId] = {}
                for m in watch:
                    last = since.get(m.stream)
                    since[m.stream] = m.last if last is None else min(last, m.last)
                try:
                    if conn is None:
                        conn = await self._connect(shard)
                    shard.blocked = True
                    try:
                        await conn.send_packed_command(self._pack_read(since), check_health=False)
                        reply = await conn.read_response()
                    finally:
                        shard.blocked = False
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
                if self._round is not None:
                    # Runners that start watching in that round join the next read.
                    await self._round.wait()
                if reply:
                    self.wakeups += 1
                    self._wake(watch, _newest(reply))
        finally:
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await self._close(conn)

    async def _connect(self, shard: _Shard) -> Any:
        """A connection of the waker's own, out of the pool (it blocks in reads)."""
        conn = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command("CLIENT", "ID")
            shard.waker_id = int(await conn.read_response())
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
        try:
            await conn.disconnect()
        except (redis_errors.RedisError, OSError):
            pass
        await self.client.connection_pool.release(conn)


def _newest(reply: Any) -> dict[str, StreamId]:
    """Per stream, the id of the entry a raw XREAD reply carries (RESP2 or RESP3)."""
    pairs = reply.items() if isinstance(reply, dict) else reply
    news: dict[str, StreamId] = {}
    for stream, entries in pairs:
        if entries:
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            news[name] = _parse_id(entries[-1][0])
    return news
