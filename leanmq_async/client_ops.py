"""Whole-client operations of LeanMQ: listing and expiry over every queue, the health report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leanmq_async.exceptions import ConfigurationError, LeanMQError, RedisOperationError
from leanmq_async.legacy import log_legacy_queues
from leanmq_async.queue_read import info_from

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.message import QueueInfo
    from leanmq_async.store import Store

__all__ = ["expire_everywhere", "list_every_queue", "redis_health"]


async def list_every_queue(mq: LeanMQ) -> list[QueueInfo]:
    """:meth:`LeanMQ.list_queues <leanmq_async.LeanMQ.list_queues>`."""
    bases = await mq.store.registered_queues(mq.prefix)
    # --- migration from LeanMQ 0.2 (issue 15): say so, once, when its queues exist ---
    if mq.store.legacy_registry_members and not mq._legacy_logged:
        mq._legacy_logged = True
        await log_legacy_queues(mq, mq.log)
    # --- end migration from LeanMQ 0.2 ---
    queues = [mq._queue_object(b, dlq) for b in bases for dlq in (False, True)]
    infos = await mq.store.stream_infos([(q.stream, q.keys) for q in queues], levels=True)
    return [
        info_from(q, info)
        for q, info in zip(queues, infos, strict=True)
        if info.get("exists", True)
    ]


async def expire_everywhere(mq: LeanMQ, policy: str, limit: int) -> int:
    """:meth:`LeanMQ.process_expired_messages <leanmq_async.LeanMQ.process_expired_messages>`."""
    if policy not in ("drop", "dlq"):
        raise ConfigurationError(f"policy must be 'drop' or 'dlq', got {policy!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"limit must be a positive integer, got {limit!r}")
    total = 0
    for base in await mq.store.registered_queues(mq.prefix):
        queue = mq._queue_object(base, False)
        # Each priority level in use has its own expiry index (see priority.py).
        in_use = await mq.store.levels_in_use(queue.keys)
        for keys in queue.keys.levels() if in_use else (queue.keys,):
            while True:
                result = await mq.store.expire(keys, queue.name, policy, limit)
                total += result.removed
                if result.scanned < limit or not result.left:
                    break
    if total:
        mq.log.info("expired", count=total)
    return total


async def redis_health(store: Store) -> dict[str, Any]:
    """:meth:`LeanMQ.health <leanmq_async.LeanMQ.health>`: Redis reachable, memory left."""
    try:
        await store.ping()
    except LeanMQError as exc:
        return {"status": "critical", "redis": False, "error": str(exc)}
    try:
        await store.check_version()
        usage = await store.memory()
    except RedisOperationError:  # INFO refused (an ACL user without +info)
        return {"status": "ok", "redis": True}
    except LeanMQError as exc:
        return {"status": "critical", "redis": True, "error": str(exc)}
    if not usage.under_pressure:
        return {"status": "ok", "redis": True}
    return {
        "status": "critical" if usage.full else "warning",
        "redis": True,
        "memory": {
            "used": usage.used,
            "maxmemory": usage.maxmemory,
            "ratio": round(usage.ratio, 3),
            "policy": usage.policy,
            "message": usage.advice(),
        },
    }
