"""Finding LeanMQ 0.2 queues under a prefix, read only, and saying how to migrate them.

LeanMQ 0.2 (the synchronous ``leanmq`` package) lays a queue ``orders`` out under prefix
``mq:`` as::

    mq:orders              stream, consumer group "orders-group" (created at "$")
    mq:orders:dlq          stream of dead letters ({"data": json} with "_failures")
    mq:orders:metadata     HASH  created_at, dlq, consumer_group
    mq:orders:dlq:metadata HASH  created_at, main_queue, consumer_group, is_dlq
    mq:orders:expiry       ZSET  stream id -> expiry time (unix seconds, client clock)
    mq:registry            SET   full stream names ("mq:orders", "mq:orders:dlq")

Acknowledged entries stay in a 0.2 stream (it acks without deleting), so its messages
are: *waiting* (after the group's last-delivered id), *pending* (delivered, not acked)
and *dead* (every entry of the DLQ stream). leanmq_async never reads these keys by
itself: :func:`find_legacy_queues` reports them so ``leanmq migrate`` (see
:mod:`leanmq_async.ops.migrate`) can move them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from leanmq_async.connection import translate_errors
from leanmq_async.keys import legacy_registry_key, validate_queue_name
from leanmq_async.replies import text

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ

__all__ = [
    "LEGACY_EVENT",
    "LegacyQueue",
    "find_legacy_queues",
    "legacy_hint",
    "legacy_notice",
    "log_legacy_queues",
]

LEGACY_EVENT = "legacy_queues_found"
"""The structlog event logged when LeanMQ 0.2 queues are found (stable name)."""

_COUNT_CAP = 100_000


class LegacyQueue(msgspec.Struct, kw_only=True):
    """One LeanMQ 0.2 queue pair found under the prefix, and what it holds."""

    name: str
    """The base name (``orders``), the same name in leanmq_async after migration."""
    stream: str
    dlq_stream: str
    group: str
    dlq_group: str
    waiting: int = 0
    """Entries no consumer of the group was delivered yet (after its last-delivered id)."""
    pending: int = 0
    """Entries delivered and not acknowledged."""
    dead: int = 0
    """Entries in the DLQ stream."""
    migratable: bool = True
    """False when the name is not a valid leanmq_async queue name (``problem`` says why)."""
    problem: str = ""

    @property
    def total(self) -> int:
        return self.waiting + self.pending + self.dead

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


def legacy_notice(queues: list[LegacyQueue]) -> str:
    """One sentence saying what was found and how to migrate it."""
    parts = ", ".join(
        f"{q.name} ({q.waiting} waiting, {q.pending} pending, {q.dead} in DLQ)" for q in queues
    )
    return (
        f"LeanMQ 0.2 queues under this prefix are not read by leanmq_async: {parts}. "
        "Move them with `leanmq migrate --all --dry-run`, then `--confirm` "
        "(or run `leanmq bridge` while LeanMQ 0.2 producers still write); see the README, "
        "'Migrating from LeanMQ 0.2'."
    )


async def legacy_hint(mq: LeanMQ, base: str) -> str:
    """For a "queue not found" error: advice if a LeanMQ 0.2 queue ``base`` exists, else "".

    One ``EXISTS``; never raises (the error being reported matters more).
    """
    try:
        found = await mq.store.client.exists(f"{mq.prefix}{base}:metadata")
    except Exception:  # noqa: BLE001 - a hint only
        return ""
    if not found:
        return ""
    return (
        f". A LeanMQ 0.2 queue {mq.prefix}{base} exists (another key layout, not read by "
        f"leanmq_async): move its messages with `leanmq migrate {base} --dry-run`, then "
        "`--confirm`, rather than creating an empty queue beside it"
    )


async def find_legacy_queues(mq: LeanMQ) -> list[LegacyQueue]:
    """The LeanMQ 0.2 queue pairs registered under ``mq.prefix``, with their counts.

    Three round trips (four when a group's lag must be counted); one when there is no
    LeanMQ 0.2 registry. A standalone Redis is assumed (LeanMQ 0.2 has no cluster mode).
    """
    prefix, client = mq.prefix, mq.store.client
    key = legacy_registry_key(prefix)
    with translate_errors("find LeanMQ 0.2 queues"):
        async with client.pipeline(transaction=False) as pipe:
            pipe.smembers(key)  # not a set (someone else's key): an error, ignored
            (members,) = await pipe.execute(raise_on_error=False)
        if isinstance(members, Exception):
            return []
        names = sorted(
            m for m in (text(x) for x in members) if m.startswith(prefix) and m != prefix
        )
        if not names:
            return []
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(f"{name}:metadata")
            metas = await pipe.execute(raise_on_error=False)
        found: list[LegacyQueue] = []
        for name, meta in zip(names, metas, strict=True):
            if isinstance(meta, Exception) or not meta:
                continue  # an earlier leanmq_async's own member, or a deleted queue
            m = {text(k): text(v) for k, v in meta.items()}
            if m.get("is_dlq") == "true":
                continue
            base = name[len(prefix) :]
            dlq = m.get("dlq") or f"{name}:dlq"
            q = LegacyQueue(
                name=base,
                stream=name,
                dlq_stream=dlq,
                group=m.get("consumer_group") or f"{base}-group",
                dlq_group=f"{m.get('consumer_group') or f'{base}-group'}-dlq",
            )
            try:
                validate_queue_name(base)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                q.migratable, q.problem = False, str(exc)
            found.append(q)
        if found:
            await _count(client, found)
    return found


async def _count(client: Any, queues: list[LegacyQueue]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.xlen(q.stream)
            pipe.xinfo_groups(q.stream)
            pipe.xlen(q.dlq_stream)
        replies = await pipe.execute(raise_on_error=False)
    to_count: list[tuple[LegacyQueue, str]] = []
    for i, q in enumerate(queues):
        length, groups, dead = replies[i * 3 : i * 3 + 3]
        q.dead = 0 if isinstance(dead, Exception) else int(dead)
        length = 0 if isinstance(length, Exception) else int(length)
        group = None
        if not isinstance(groups, Exception):
            group = next((g for g in groups if text(g.get("name")) == q.group), None)
        if group is None:
            q.waiting = length  # no group: nothing was ever delivered
            continue
        q.pending = int(group.get("pending") or 0)
        lag = group.get("lag")
        if lag is not None:
            q.waiting = int(lag)
        else:
            to_count.append((q, text(group.get("last-delivered-id"))))
    if to_count:
        async with client.pipeline(transaction=False) as pipe:
            for q, last in to_count:
                pipe.xrange(q.stream, f"({last}", "+", count=_COUNT_CAP)
            entries = await pipe.execute()
        for (q, _), got in zip(to_count, entries, strict=True):
            q.waiting = len(got)


async def log_legacy_queues(mq: LeanMQ, log: Any) -> list[LegacyQueue]:
    """Log :data:`LEGACY_EVENT` (a warning) if LeanMQ 0.2 queues exist; never raises."""
    try:
        found = await find_legacy_queues(mq)
    except Exception as exc:  # noqa: BLE001 - a start-up notice must not stop a worker
        log.debug("legacy_check_failed", error=str(exc))
        return []
    if found:
        log.warning(
            LEGACY_EVENT,
            prefix=mq.prefix,
            queues={
                q.name: {"waiting": q.waiting, "pending": q.pending, "dlq": q.dead} for q in found
            },
            advice=legacy_notice(found),
        )
    return found
