"""What every part of the store shares: the client, the registered scripts, the clock."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from leanmq_async.cluster import AnyRedis, Durability, is_cluster
from leanmq_async.connection import translate_errors
from leanmq_async.scripts import Scripts
from leanmq_async.send_coalescer import SendCoalescer
from leanmq_async.send_errors import client_retries

__all__ = ["ID_BATCH", "StoreBase", "chunked"]

ID_BATCH = 1000
"""Ids per script call where a caller passes any number (leases, requeues): bounded work
per call (the scripts also slice what they unpack; Lua's unpack fails at ~8,000)."""


class StoreBase:
    """The state the store's parts share; :class:`~leanmq_async.store.Store` adds the rest."""

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
        self.scripts = Scripts.register(client)
        self._move_due_loaded = False
        self._clock_offset_ms = 0.0
        self._clock_synced_at = -1e18
        # Moves the clock every time decision uses (the scripts' and redis_now_ms) forward
        # by this many ms. Always 0 in production; a test sets it to let time pass at once.
        self.clock_shift_ms = 0
        # Members of LeanMQ 0.2's registry seen by the last registered_queues (issue 15).
        self.legacy_registry_members = 0
        # -- idempotent sends and honest send errors (issue 17) --
        self.dedup_hits = 0  # sends that found their message_id already sent
        self._retries = client_retries(client)  # > 0: every send error is "outcome unknown"
        # -- concurrent sends share round trips (issue 14); None: each send alone --
        self.coalescer: SendCoalescer | None = None
        if not getattr(client, "single_connection_client", False):
            self.coalescer = SendCoalescer(client, self.cluster, self._retries)

    async def load_scripts(self) -> None:
        """Load every script now (on every primary of a cluster).

        Not needed for correctness (a call that meets NOSCRIPT loads its script and runs
        again), but a worker does it at start so that its first settling batch, maybe
        hundreds of failures at once, does not pay for that.
        """
        with translate_errors("SCRIPT LOAD"):
            for script in self.scripts.all():
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
        Redis (``lua/expire_read.lua``).
        """
        if time.monotonic() - self._clock_synced_at > max_age:
            await self.sync_clock()
        return time.monotonic() * 1000 + self._clock_offset_ms + self.clock_shift_ms


def chunked(replies: Sequence[Any], size: int) -> list[tuple[Any, ...]]:
    """A pipeline's replies, ``size`` per item queued (``size`` commands per item)."""
    if len(replies) % size:
        raise ValueError(f"{len(replies)} replies do not split into items of {size}")
    return [tuple(replies[i : i + size]) for i in range(0, len(replies), size)]
