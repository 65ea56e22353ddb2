"""Shared reads for a worker with many handlers: one wake-up read, one claim pipeline.

A worker with a few handlers gives each its own blocking XREADGROUP (the fast path of
:mod:`leanmq_async.worker.fetcher`). With many (hundreds of queues, or a queue of many
partitions), that would hold one connection per idle handler. Instead the runners of
such a worker share a :class:`ReadHub`, whose cost does not grow with idle queues:

* **the wakers** (:mod:`leanmq_async.worker.read_waker`): one non-consuming
  ``XREAD BLOCK COUNT 1`` each, on a connection of its own, over the streams of up to
  ``_SHARD_SIZE`` runners (at most ``_MAX_SHARDS`` wakers), each stream from an explicit
  id (never ``$``, which misses entries added between two reads): the newest entry its
  runner knows everything up to was delivered to its group. A reply wakes the runners
  whose streams have newer entries; nothing is consumed, so cancelling it loses nothing;
* **the claimer**: the woken runners, and runners with a backlog, each ask
  :meth:`ReadHub.claim_new` for up to ``n`` (their free slots) new entries; a runner
  with no free slot asks for nothing. Every request waiting when a round starts goes in
  ONE pipeline: per runner its buffered XACK (acks ride with the read), an ``XREVRANGE
  + - COUNT 1`` (the newest id before the claim) and a non-blocking XREADGROUP in its
  own group (groups may differ per stream). A claim that came back short leaves its
  runner watching from that id; a full one takes it off the watch list and keeps it
  claiming as slots free up, without waiting, so a backlog on one queue does not starve
  the others (each round serves every runner asking). Acks without a read, reclaim
  steps and lease extensions ride in the same rounds (a bounded number of script calls
  per round); retries and dead-letter moves of every runner share one settle batcher;
* **the reclaim scanner**: every reclaim interval one ``lua/pending_scan.lua`` call (per
  500 runners) asks which groups hold entries idle past their lease; only those runners
  run a reclaim step;
* **the level scanner** (priorities): at start and then every ``LEVEL_CHECK`` seconds,
  one pipeline of ``EXISTS`` asks which members' queues have a priority level's stream
  or delayed set. Such a runner leaves the hub for good (:meth:`HubMember.stop`, with
  ``levels`` set) and reads its levels itself with ``lua/claim.lua`` (highest level
  first, the starvation guard) and its own wait, as in a worker with few handlers; its
  acks, lease extensions and reclaim steps still ride the hub's rounds.

Connections: one per waker and one for the claim round in flight, however many queues.
A runner that starts watching (at start, or at the end of a backlog) while its waker is
blocked makes the claimer send ``CLIENT UNBLOCK`` to that waker, which reads again with
the longer list. On Redis Cluster a multi-key read must stay in one slot: a worker there
keeps the per-runner loops (see ``WorkerSettings.shared_reads``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import redis.exceptions as redis_errors

from leanmq_async._log import get_logger
from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import LeanMQError
from leanmq_async.keys import DEFAULT_LEVEL, QueueKeys
from leanmq_async.priority import LEVEL_CHECK
from leanmq_async.replies import ReclaimResult, parse_extend_leases, parse_reclaim
from leanmq_async.store.base import ID_BATCH
from leanmq_async.store.reading import _read_entries
from leanmq_async.worker.level_scan import levels_found
from leanmq_async.worker.read_waker import HubMember, Waker, parse_id
from leanmq_async.worker.settle_batch import SettleBatcher

if TYPE_CHECKING:
    from leanmq_async.store import RawEntry, Store

__all__ = ["HubMember", "ReadHub"]

# Requests per pipeline: a round with every runner of a large worker stays bounded.
_ROUND_MAX = 1000
# Script calls (reclaim steps, lease extensions) per round at most (the rest go in the
# next rounds), so a claim never waits behind all of them.
_SCANS_PER_ROUND = 500
# Streams per waker, and wakers at most: news on one stream makes its waker read again,
# at a cost (Redis's and ours) that grows with the streams of that read.
_SHARD_SIZE = 250
_MAX_SHARDS = 3


def _error(exc: BaseException, what: str) -> LeanMQError:
    """``exc`` as the library's exception (a redis-py one translated)."""
    if isinstance(exc, LeanMQError):
        return exc
    try:
        with translate_errors(what):
            raise exc
    except LeanMQError as translated:
        return translated
    except Exception as other:  # noqa: BLE001 - not a Redis error: reported as one anyway
        return LeanMQError(f"{what} failed: {other}")


class _Request:
    __slots__ = ("acks", "args", "done", "error", "kind", "member", "n", "reply", "taken")

    def __init__(
        self, kind: str, member: HubMember, n: int = 0, acks: Sequence[bytes] = ()
    ) -> None:
        self.kind = kind  # "claim", "ack" or "script"
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
        self._wakers: list[Waker] = []
        self._round: anyio.Event | None = None  # a claim round in flight
        self._reading = anyio.CancelScope()
        self.rounds = 0  # claim rounds sent (tests and benchmarks count them)
        # One settle batcher for every runner: retries and dead-letter moves of many
        # queues failing together share its pipelines (and its one connection).
        self.settle_batcher = SettleBatcher(store)
        self.levels_scanned = anyio.Event()  # the level scanner's first pass is done
        self._exists_packed: dict[tuple[str, ...], bytes] = {}

    @property
    def wakeups(self) -> int:
        """Wake-up reads that came back with news (tests and benchmarks count them)."""
        return sum(w.wakeups for w in self._wakers)

    def join(
        self,
        stream: str,
        group: str,
        consumer: str,
        lease_ms: int,
        reclaim_interval: float,
        keys: QueueKeys | None = None,
    ) -> HubMember:
        """A runner's member; it claims once at start (``dirty``), then watches.
        ``keys``: its queue's, whose priority levels the level scanner looks for."""
        others: tuple[str, ...] = ()
        if keys is not None:
            # A level is in use once its stream or delayed set exists (its delayed data
            # and expiry index never exist without them).
            others = tuple(
                x for k in keys.levels() if k.level != DEFAULT_LEVEL for x in (k.stream, k.delayed)
            )
        member = HubMember(stream, group, consumer, lease_ms, reclaim_interval, others)
        self.members.append(member)
        return member

    async def run(self) -> None:
        """Run the wakers and the claimer until cancelled."""
        count = min(_MAX_SHARDS, -(-len(self.members) // _SHARD_SIZE)) or 1
        self._wakers = [
            Waker(self.client, self.block_ms, self.log, lambda: self._round) for _ in range(count)
        ]
        for i, member in enumerate(self.members):
            member.shard = i % count
            self._wakers[member.shard].members.append(member)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._claimer)
            tg.start_soon(self._reclaim_scanner)
            tg.start_soon(self._level_scanner)
            tg.start_soon(self._read)

    async def _read(self) -> None:
        with self._reading:
            async with anyio.create_task_group() as tg:
                for waker in self._wakers:
                    tg.start_soon(waker.run)

    def stop_reading(self) -> None:
        """Shutdown began: abandon the wake-up reads (their connections are closed); the
        claimer stays for the last acks and settling steps."""
        self._reading.cancel()

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
        args = [group, consumer, min_idle_ms, count, start, owner]
        reply = await self._script(self.store.scripts.reclaim.sha, stream, args)
        if isinstance(reply, redis_errors.NoScriptError):
            # Redis lost its scripts (restarted): the direct call loads it.
            return await self.store.reclaim(
                stream, group, consumer, min_idle_ms, count, start, owner
            )
        return parse_reclaim(reply)

    async def extend_leases(
        self, stream: str, group: str, consumer: str, ids: Sequence[bytes | str]
    ) -> list[bytes]:
        """Lease extensions (``lua/extend_leases.lua``) in the next round; as
        ``Store.extend_leases``: the ids whose lease was lost."""
        lost: list[bytes] = []
        sha = self.store.scripts.extend_leases.sha
        for i in range(0, len(ids), ID_BATCH):
            batch = list(ids[i : i + ID_BATCH])
            reply = await self._script(sha, stream, [group, consumer, *batch])
            if isinstance(reply, redis_errors.NoScriptError):
                lost += await self.store.extend_leases(stream, group, consumer, batch)
            else:
                lost += parse_extend_leases(reply)
        return lost

    async def _script(self, sha: str, stream: str, args: list[Any]) -> Any:
        """EVALSHA of a one-key script in the next round: its reply (NoScriptError given
        back, for the caller's direct call to load the script)."""
        request = _Request("script", HubMember(stream, "", ""))
        request.args = [sha, 1, stream, *args]
        return await self._submit(request, withdrawable=False)

    def withdraw(self, member: HubMember) -> None:
        """Drop ``member``'s claim requests no round took yet (its runner stops)."""
        for request in [r for r in self._requests if r.member is member and r.kind == "claim"]:
            self._requests.remove(request)
            request.done.set()

    async def _submit(self, request: _Request, *, withdrawable: bool = True) -> Any:
        self._requests.append(request)
        self._requested.set()
        if withdrawable:
            try:
                await request.done.wait()
            except BaseException:
                # Cancelled: a claim no round took yet is not sent (one already sent
                # leaves its entries pending, for reclaim).
                if not request.taken and request in self._requests:
                    self._requests.remove(request)
                raise
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

    async def _level_scanner(self) -> None:
        """Which members' queues use priority levels: those leave the hub (module doc)."""
        while True:
            members = [m for m in self.members if m.level_keys and not m.stopped]
            if not members:
                self.levels_scanned.set()
                return
            try:
                found = await levels_found(self.client, members, self._exists_packed)
            except LeanMQError as exc:
                self.log.warning("level_scan_failed", error=str(exc))
                found = [0] * len(members)
            for member, exists in zip(members, found, strict=True):
                if exists and not member.stopped:
                    member.levels = True
                    member.stop()  # off the watch lists; its loops notice ``levels``
            self.levels_scanned.set()
            await anyio.sleep(LEVEL_CHECK)

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
                        request.kind == "script" and scans >= _SCANS_PER_ROUND
                    ):
                        later.append(request)
                        continue
                    scans += request.kind == "script"
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
            except Exception as exc:  # noqa: BLE001 - the whole round failed (Redis away)
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
            await self._wakers[i].unblock()

    def _queue(self, pipe: Any, request: _Request) -> None:
        member = request.member
        if request.kind == "script":
            pipe.evalsha(*request.args)
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
            if request.kind == "script":
                reply = replies[at]
                at += 1
                if isinstance(reply, Exception) and not isinstance(
                    reply, redis_errors.NoScriptError
                ):
                    request.error = _error(reply, "script")
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
                parse_id(top[0][0]) if top else (0, 0),
                parse_id(entries[-1][0]) if entries else (0, 0),
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
            self._wakers[i].joined.set()
        return joined
