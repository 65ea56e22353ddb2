"""The one place that sends commands to Redis.

:class:`Store` wraps a ``redis.asyncio`` client and offers each queue operation as one
call: one command, one pipeline or one script, so a reader can count round trips here.
Every redis-py error is translated by :func:`~leanmq_async.connection.translate_errors`.

Its methods live in one module per concern, each a part of :class:`Store`:

* :mod:`~leanmq_async.store.base`: the client, the registered scripts, the clock;
* :mod:`~leanmq_async.store.queues`: create, inspect, empty, delete; upkeep (due
  delayed entries, expiry, trimming);
* :mod:`~leanmq_async.store.sending`: XADD and the send script;
* :mod:`~leanmq_async.store.reading`: read, ack, reclaim, leases;
* :mod:`~leanmq_async.store.settling`: retry, dead-letter, expire on read, requeue, and
  batches of settling calls;
* :mod:`~leanmq_async.store.server`: version, memory, ping, the stats snapshot;
* :mod:`~leanmq_async.store.cron`: periodic jobs' state (the tick script, outcomes).

The Lua scripts are ``leanmq_async/lua/*.lua`` (:mod:`leanmq_async.scripts` registers
them); :mod:`leanmq_async.replies` parses their replies; :mod:`leanmq_async.store_types`
holds the values passed in.
"""

from __future__ import annotations

from leanmq_async.replies import ExpireResult, ReclaimResult
from leanmq_async.store.base import StoreBase
from leanmq_async.store.cron import CronStore
from leanmq_async.store.queues import QueueAdmin
from leanmq_async.store.reading import Reading
from leanmq_async.store.sending import Sending
from leanmq_async.store.server import MIN_REDIS_VERSION, ServerInfo
from leanmq_async.store.settling import Settling
from leanmq_async.store_types import MemoryUsage, RawEntry, SendOp, SettleCall

__all__ = [
    "MIN_REDIS_VERSION",
    "ExpireResult",
    "MemoryUsage",
    "RawEntry",
    "ReclaimResult",
    "SendOp",
    "SettleCall",
    "Store",
]


class Store(QueueAdmin, Sending, Reading, Settling, ServerInfo, CronStore, StoreBase):
    """Queue operations on one Redis client (owned or borrowed)."""
