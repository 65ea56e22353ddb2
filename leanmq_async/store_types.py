"""The values handed to and returned by the store, besides script replies.

Script replies are typed and parsed by :mod:`leanmq_async.replies`.

A module of its own, importing nothing of the store, so that :mod:`leanmq_async.cluster`
and the callers can name these types without importing the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.commands.core import AsyncScript

from leanmq_async.keys import QueueKeys

__all__ = ["MemoryUsage", "RawEntry", "SendOp", "SettleCall"]

RawEntry = tuple[bytes, dict[bytes, bytes] | None]
"""A stream entry as Redis returns it: ``(stream id, fields)``; fields are None if deleted."""


class SendOp:
    """One message to write: which queue, the encoded envelope, TTL and delay (ms).

    With ``dedup_ms`` > 0 it is deduplicated by ``message_id`` for that many ms (see
    :mod:`leanmq_async.idempotency`).
    """

    __slots__ = ("body", "dedup_ms", "delay_ms", "field", "keys", "member", "message_id", "ttl_ms")

    def __init__(
        self,
        keys: QueueKeys,
        field: bytes,
        body: bytes,
        ttl_ms: int = 0,
        delay_ms: int = 0,
        member: str = "",
        message_id: str = "",
        dedup_ms: int = 0,
    ) -> None:
        self.keys = keys
        self.field = field
        self.body = body
        self.ttl_ms = ttl_ms
        self.delay_ms = delay_ms
        self.member = member
        self.message_id = message_id
        self.dedup_ms = dedup_ms


class SettleCall:
    """One settling script call (retry, dead-letter, expire-read), to run in a batch.

    ``parse`` turns the script's reply into the call's result (one parser of
    :mod:`leanmq_async.replies`).
    """

    __slots__ = ("args", "keys", "parse", "script")

    def __init__(
        self,
        script: AsyncScript,
        keys: list[str],
        args: list[Any],
        parse: Callable[[Any], int],
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.parse = parse


class MemoryUsage:
    """Redis memory use: bytes used, ``maxmemory`` (0: no limit) and the eviction policy."""

    __slots__ = ("maxmemory", "policy", "used")

    # Above this share of maxmemory, Redis is under memory pressure: a worker trims
    # acknowledged history at once (whatever its retention) and health warns.
    PRESSURE = 0.9
    # Within 2 % of maxmemory: a write of any size is refused (the reply to a refusal
    # frees its buffers, so used memory reads a little under the limit again).
    FULL = 0.98

    def __init__(self, used: int, maxmemory: int, policy: str) -> None:
        self.used = used
        self.maxmemory = maxmemory
        self.policy = policy

    def __repr__(self) -> str:
        return f"<MemoryUsage {self.used}/{self.maxmemory} ({self.ratio:.0%}) {self.policy}>"

    @property
    def ratio(self) -> float:
        """Used / maxmemory (0.0 when there is no limit)."""
        return self.used / self.maxmemory if self.maxmemory else 0.0

    @property
    def under_pressure(self) -> bool:
        return self.ratio >= self.PRESSURE

    @property
    def full(self) -> bool:
        """At ``maxmemory`` with ``noeviction``: Redis refuses writes (sends, retries)."""
        return self.ratio >= self.FULL and self.policy == "noeviction"

    def advice(self) -> str:
        """What is wrong and what to do, for a health report."""
        state = "writes are refused (OOM)" if self.full else "writes will soon be refused"
        return (
            f"{self.describe()}: {state}. A running worker trims acknowledged history at once "
            "under memory pressure (logged as trimmed_early); if memory stays high, what "
            "remains is unhandled: run or scale workers, empty or requeue the dead-letter "
            "queues, or raise maxmemory."
        )

    def describe(self) -> str:
        return (
            f"Redis uses {self.used:,} bytes, {self.ratio:.0%} of maxmemory {self.maxmemory:,} "
            f"(policy {self.policy or '?'})"
        )
