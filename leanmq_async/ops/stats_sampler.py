"""Throughput and error rate: a sampler of :func:`collect_stats` snapshots and their deltas.

The counters it compares are the ones Redis keeps per stream (see :mod:`leanmq_async.ops.stats`).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from leanmq_async.ops.stats import DEFAULT_LAG_COUNT_CAP, QueueStats, Stats, collect_stats

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = ["StatsSampler"]

_MAX_SAMPLES = 10_000

_Counters = tuple[int | None, int | None, int | None]
"""Per queue: entries added, settled by the groups, dead-lettered."""


def _counters(q: QueueStats) -> _Counters:
    # entries-added - (lag + pending) per group is what the group has settled; it equals
    # entries-read - pending, but stays known when Redis invalidates entries-read (after
    # XDEL of entries the group has not read yet), since the lag is counted then.
    settled: int | None = None
    exact = all(g.lag is not None and g.lag_exact for g in q.groups)
    if q.groups and q.entries_added is not None and exact:
        settled = sum(q.entries_added - (g.backlog or 0) for g in q.groups)
    return (q.entries_added, settled, q.dlq_entries_added)


def _delta(points: list[tuple[float, int | None]]) -> int | None:
    """The growth of a counter over ``(time, value)`` points; None if unknown or reset."""
    values = [v for _, v in points if v is not None]
    if len(points) < 2 or len(values) < len(points):
        return None
    if any(b < a for a, b in itertools.pairwise(values)):
        return None  # the counter went back: the stream was purged or recreated
    return values[-1] - values[0]


class StatsSampler:
    """Collects stats and derives throughput and error rate from the previous samples.

    Keep one sampler alive (a dashboard, a watch loop, a metrics exporter) and call
    :meth:`collect` periodically: rates compare the new sample with the oldest one taken
    within ``window`` seconds (or the latest before, when sampling is sparser). The first
    sample has no rates. Samples live in memory only.
    """

    def __init__(
        self,
        mq: LeanMQ,
        *,
        window: float = 60.0,
        queues: Sequence[str] | None = None,
        lag_count_cap: int = DEFAULT_LAG_COUNT_CAP,
    ) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        self.mq = mq
        self.window = window
        self.queues = list(queues) if queues is not None else None
        self.lag_count_cap = lag_count_cap
        self._samples: deque[tuple[float, dict[str, _Counters]]] = deque(maxlen=_MAX_SAMPLES)

    def __repr__(self) -> str:
        return f"<StatsSampler window={self.window:g}s samples={len(self._samples)}>"

    async def collect(self) -> Stats:
        """A new snapshot, with rates when an earlier sample exists."""
        stats = await collect_stats(self.mq, self.queues, lag_count_cap=self.lag_count_cap)
        return self.observe(stats)

    def observe(self, stats: Stats) -> Stats:
        """Record ``stats`` as a sample and fill in its rates (returns it)."""
        now = stats.collected_at
        current = {q.name: _counters(q) for q in stats.queues}
        inside = [s for s in self._samples if now - self.window <= s[0] < now]
        older = [s for s in self._samples if s[0] < now - self.window]
        baseline = inside[0] if inside else (older[-1] if older else None)
        series = [s for s in self._samples if baseline and baseline[0] <= s[0] < now]
        # Keep the samples inside the window, plus the newest one before it.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        # Concurrent collections may finish out of order: keep the samples sorted.
        if len(self._samples) == self._samples.maxlen:
            self._samples.popleft()
        at = bisect.bisect_right([t for t, _ in self._samples], now)
        self._samples.insert(at, (now, current))
        if baseline is None:
            return stats
        stats.window_s = now - baseline[0]
        series.append((now, current))
        for q in stats.queues:
            points = [(t, sample[q.name]) for t, sample in series if q.name in sample]
            seconds = now - points[0][0]
            if seconds <= 0:
                continue
            added, settled, dead = (_delta([(t, c[i]) for t, c in points]) for i in range(3))
            q.enqueued_per_s = None if added is None else round(added / seconds, 3)
            q.processed_per_s = None if settled is None else round(settled / seconds, 3)
            q.dead_lettered_per_s = None if dead is None else round(dead / seconds, 3)
            if settled is not None and dead is not None and (settled or dead):
                q.error_rate = round(min(1.0, dead / settled), 4) if settled else 1.0
        return stats
