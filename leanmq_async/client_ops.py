"""Whole-client operations of LeanMQ: expiry over every queue, and the health report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leanmq_async.exceptions import ConfigurationError, LeanMQError, RedisOperationError

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.store import Store

__all__ = ["expire_everywhere", "redis_health"]


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
