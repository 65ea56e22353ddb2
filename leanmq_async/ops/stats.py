"""Queue statistics: depth, pending, lag, consumers, DLQ, delayed, throughput.

``await collect_stats(mq)`` reads every queue of the client's prefix in a bounded number
of round trips, whatever the number of queues:

1. ``SMEMBERS`` of the registry (skipped when ``queues=`` names them);
2. one pipeline: per queue ``XINFO STREAM … FULL COUNT 1`` of the stream and of its DLQ,
   ``ZCARD`` of the delayed set, ``HGETALL`` of the metadata, and ``TIME`` once;
3. only when Redis reports no lag for a group (entries were deleted after the group's
   last-delivered id, or Redis < 7) and it cannot be derived from the first/last ids:
   one pipeline of small counting scripts (entries counted inside Redis, capped).

So 2 round trips for 1 queue and for 50 (3 when a lag must be counted; one more when
periodic jobs exist: their states, :mod:`leanmq_async.ops.cron_list`).

Throughput and error rate come from
:class:`~leanmq_async.ops.stats_sampler.StatsSampler`, which keeps recent samples in
memory and derives rates from the deltas of counters Redis keeps per stream:

* ``enqueued_per_s``: stream ``entries-added`` (sends, retries, requeues, redeliveries);
* ``processed_per_s``: per group ``entries-added - lag - pending`` (``entries-read -
  pending`` while Redis knows ``entries-read``), summed over the groups: entries the
  group settled (acknowledged after handling, a retry or dead-lettering; or expired or
  deleted before delivery);
* ``dead_lettered_per_s``: the DLQ's ``entries-added``;
* ``error_rate``: dead-lettered / processed over the window (None when nothing was
  processed). A counter that went backwards (queue purged or recreated) gives None.

This needs no extra command and no writes; the alternative (XRANGE over the last N
seconds) costs a read proportional to traffic and cannot see acknowledgements.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from leanmq_async.keys import DLQ_SUFFIX, QueueKeys, validate_queue_name
from leanmq_async.legacy import LegacyQueue, find_legacy_queues
from leanmq_async.ops.cron_list import CronStats, collect_cron, cron_queue_names

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = [
    "DEFAULT_LAG_COUNT_CAP",
    "ConsumerStats",
    "GroupStats",
    "QueueStats",
    "Stats",
    "collect_stats",
]

DEFAULT_LAG_COUNT_CAP = 100_000
"""When a lag must be counted, counting stops here (the lag is then reported as a floor)."""


class ConsumerStats(msgspec.Struct, kw_only=True):
    """One consumer of a group."""

    name: str
    pending: int
    idle_s: float | None
    """Seconds since the consumer last talked to Redis (read, claim, ack: ``seen-time``)."""
    inactive_s: float | None = None
    """Seconds since its last successful read or claim (``active-time``, Redis 7.2+)."""


class GroupStats(msgspec.Struct, kw_only=True):
    """One consumer group of a stream."""

    name: str
    pending: int
    """Delivered to a consumer, not acknowledged yet (the group's PEL)."""
    lag: int | None
    """Entries not delivered to the group yet (``lag`` of XINFO, or counted)."""
    lag_exact: bool = True
    """False when counting stopped at the cap: ``lag`` is then a lower bound."""
    backlog: int | None
    """``lag + pending``: what the group has not finished with."""
    entries_read: int | None
    last_delivered_id: str
    oldest_pending_id: str | None = None
    oldest_pending_age_s: float | None = None
    """Seconds since the oldest pending entry was enqueued (from its stream id)."""
    oldest_pending_idle_s: float | None = None
    """Seconds since the oldest pending entry was last delivered."""
    consumers: list[ConsumerStats] = []


class QueueStats(msgspec.Struct, kw_only=True):
    """One queue pair: the main stream (with its groups), its DLQ and delayed set."""

    name: str
    exists: bool = True
    """False when the main stream is gone (deleted with its DLQ kept)."""
    length: int = 0
    """Entries in the stream: waiting, pending and acknowledged history not trimmed yet."""
    entries_added: int | None = None
    last_id: str | None = None
    pending: int = 0
    """Pending entries summed over the groups."""
    lag: int | None = None
    """The largest lag of the groups (None without groups)."""
    backlog: int = 0
    """The largest ``lag + pending`` of the groups (the stream length without groups)."""
    oldest_pending_age_s: float | None = None
    consumers: int = 0
    groups: list[GroupStats] = []
    delayed: int = 0
    """Scheduled messages: ``delay=`` sends and retries waiting for their time."""
    dlq_length: int = 0
    dlq_entries_added: int | None = None
    dlq_pending: int = 0
    dlq_oldest_age_s: float | None = None
    created_at: float | None = None
    enqueued_per_s: float | None = None
    processed_per_s: float | None = None
    dead_lettered_per_s: float | None = None
    error_rate: float | None = None
    error: str | None = None
    """A key of the wrong type, reported instead of failing the whole collection."""


class Stats(msgspec.Struct, kw_only=True):
    """A snapshot of every queue under one prefix (JSON: ``msgspec.json.encode(stats)``)."""

    prefix: str
    collected_at: float
    """The Redis clock, unix seconds (ages and rates use it, not the local clock)."""
    queues: list[QueueStats]
    round_trips: int
    window_s: float | None = None
    """Seconds between the samples the rates were computed from (None: no rates)."""
    legacy: list[LegacyQueue] = []
    """LeanMQ 0.2 queues found under the prefix, not read by leanmq_async: migrate them
    (``leanmq migrate``). Looked for only when the registry is read (no ``queues=``)."""
    cron: list[CronStats] = []
    """The periodic jobs (queues ``cron.<job>``): schedule, last and next tick, outcome."""

    def queue(self, name: str) -> QueueStats:
        """The stats of queue ``name``; ``KeyError`` if it is not in the snapshot."""
        for q in self.queues:
            if q.name == name:
                return q
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python data (dicts, lists, numbers, strings), e.g. for ``json.dumps``."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


# -- collection ---------------------------------------------------------------------------


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _map(value: Any) -> dict[str, Any]:
    """An XINFO map, whatever shape redis-py gave it (dict, or flat key-value list)."""
    if isinstance(value, Mapping):
        return {_s(k): v for k, v in value.items()}
    if isinstance(value, list | tuple):
        it = iter(value)
        return {_s(k): v for k, v in zip(it, it, strict=False)}
    return {}


def _int(value: Any) -> int | None:
    if value is None or value is False:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _id_parts(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms or 0), int(seq or 0)


def _age(now_ms: float, then_ms: float | None) -> float | None:
    if then_ms is None:
        return None
    return round(max(0.0, now_ms - then_ms) / 1000, 3)


def _first_id(info: dict[str, Any]) -> str | None:
    entries = info.get("entries")
    if isinstance(entries, Mapping):
        for sid in entries:
            return _s(sid)
    elif isinstance(entries, list | tuple) and entries:
        first = entries[0]
        return _s(first[0] if isinstance(first, list | tuple) else first)
    return None


def _consumer(raw: Any, now_ms: float) -> ConsumerStats:
    c = _map(raw)
    seen, active = _int(c.get("seen-time")), _int(c.get("active-time"))
    return ConsumerStats(
        name=_s(c.get("name", "")),
        pending=_int(c.get("pel-count")) or 0,
        idle_s=_age(now_ms, seen),
        inactive_s=_age(now_ms, active) if active is not None and active >= 0 else None,
    )


def _group(raw: Any, stream: dict[str, Any], now_ms: float) -> tuple[GroupStats, bool]:
    """A group's stats; the flag says its lag is unknown and must be counted."""
    g = _map(raw)
    pending = _int(g.get("pel-count"))
    if pending is None:
        pending = _int(g.get("pending")) or 0
    last = _s(g.get("last-delivered-id", "0-0"))
    lag = _int(g.get("lag"))
    must_count = False
    if lag is None:
        length = _int(stream.get("length")) or 0
        newest = _s(stream.get("last-generated-id", "0-0"))
        first = _first_id(stream)
        if length == 0 or _id_parts(last) >= _id_parts(newest):
            lag = 0
        elif first is not None and _id_parts(last) < _id_parts(first):
            lag = length
        else:
            must_count = True
    group = GroupStats(
        name=_s(g.get("name", "")),
        pending=pending,
        lag=lag,
        backlog=None if lag is None else lag + pending,
        entries_read=_int(g.get("entries-read")),
        last_delivered_id=last,
        consumers=[_consumer(c, now_ms) for c in g.get("consumers") or []],
    )
    pel = g.get("pending")
    if isinstance(pel, list | tuple) and pel:
        oldest = pel[0]
        group.oldest_pending_id = _s(oldest[0])
        group.oldest_pending_age_s = _age(now_ms, _id_parts(group.oldest_pending_id)[0])
        delivered = _int(oldest[2]) if len(oldest) >= 4 else None
        group.oldest_pending_idle_s = _age(now_ms, delivered)
    return group, must_count


def _queue(name: str, raw: dict[str, Any], now_ms: float) -> tuple[QueueStats, list[GroupStats]]:
    """A queue's stats; the groups whose lag must still be counted."""
    q = QueueStats(name=name, delayed=raw["delayed"], error=raw["error"])
    created = raw["meta"].get("created_at")
    try:
        q.created_at = float(created) if created else None
    except ValueError:
        q.created_at = None
    to_count: list[GroupStats] = []
    stream = raw["stream"]
    if stream is None:
        q.exists = False
    else:
        info = _map(stream)
        q.length = _int(info.get("length")) or 0
        q.entries_added = _int(info.get("entries-added"))
        q.last_id = _s(info["last-generated-id"]) if info.get("last-generated-id") else None
        for g in info.get("groups") or []:
            group, must_count = _group(g, info, now_ms)
            q.groups.append(group)
            if must_count:
                to_count.append(group)
    dlq = raw["dlq"]
    if dlq is not None:
        info = _map(dlq)
        q.dlq_length = _int(info.get("length")) or 0
        q.dlq_entries_added = _int(info.get("entries-added"))
        first = _first_id(info)
        q.dlq_oldest_age_s = _age(now_ms, _id_parts(first)[0]) if first else None
        q.dlq_pending = sum((_int(_map(g).get("pel-count")) or 0) for g in info.get("groups") or [])
    for level in raw.get("levels", ()):  # priority levels (priority.py) count in the queue's
        q.length, q.delayed = q.length + level["length"], q.delayed + level["delayed"]
        for lg in (_map(x) for x in level["groups"]):
            for g in (g for g in q.groups if g.name == _s(lg.get("name", ""))):
                g.pending += _int(lg.get("pending")) or 0
                lag = _int(lg.get("lag"))
                g.lag = None if g.lag is None or lag is None else g.lag + lag
                g.backlog = None if g.lag is None else g.lag + g.pending
    return q, to_count


def _summarise(q: QueueStats) -> None:
    groups = q.groups
    q.pending = sum(g.pending for g in groups)
    lags = [g.lag for g in groups if g.lag is not None]
    q.lag = max(lags) if lags else None
    backlogs = [g.backlog for g in groups if g.backlog is not None]
    q.backlog = max(backlogs) if backlogs else (0 if groups else q.length)
    ages = [g.oldest_pending_age_s for g in groups if g.oldest_pending_age_s is not None]
    q.oldest_pending_age_s = max(ages) if ages else None
    q.consumers = sum(len(g.consumers) for g in groups)


async def collect_stats(
    mq: LeanMQ,
    queues: Iterable[str] | None = None,
    *,
    lag_count_cap: int = DEFAULT_LAG_COUNT_CAP,
) -> Stats:
    """Statistics of every queue under ``mq.prefix`` (or of the ``queues`` named).

    Two round trips for any number of queues (three when a lag must be counted; one
    fewer with ``queues=``). Rates are None here: use a :class:`StatsSampler`.
    """
    trips = 0
    if queues is None:
        names = await mq.store.registered_queues(mq.prefix)
        trips += 1
    else:
        names = []
        for name in queues:
            validate_queue_name(name)
            names.append(name.removesuffix(DLQ_SUFFIX))
        names = list(dict.fromkeys(names))
    keys = [QueueKeys(mq.prefix, name) for name in names]
    raws, now_ms = await mq.store.stats_snapshot(keys)
    trips += 1
    out: list[QueueStats] = []
    counting: list[tuple[GroupStats, str]] = []
    for k, raw in zip(keys, raws, strict=True):
        q, to_count = _queue(k.base, raw, now_ms)
        out.append(q)
        counting += [(g, k.stream) for g in to_count]
    if counting:
        counts = await mq.store.count_after(
            [(stream, g.last_delivered_id) for g, stream in counting], lag_count_cap
        )
        trips += 1
        for (g, _), n in zip(counting, counts, strict=True):
            g.lag, g.lag_exact, g.backlog = n, n < lag_count_cap, n + g.pending
    for q in out:
        _summarise(q)
    jobs = cron_queue_names(names)  # periodic jobs (issue 16): one more round trip
    cron, trips = (await collect_cron(mq, jobs), trips + 1) if jobs else ([], trips)
    # --- migration from LeanMQ 0.2 (issue 15): only when its registry has members ---
    legacy: list[LegacyQueue] = []
    if queues is None and mq.store.legacy_registry_members:
        legacy = await find_legacy_queues(mq)
        trips += 2
    # --- end migration from LeanMQ 0.2 ---
    stats = Stats(prefix=mq.prefix, collected_at=now_ms / 1000, queues=out, round_trips=trips)
    stats.legacy, stats.cron = legacy, cron
    return stats
