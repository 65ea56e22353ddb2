"""Periodic jobs' state in Redis: the tick script, registration, outcomes, listing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from leanmq_async.connection import translate_errors
from leanmq_async.keys import QueueKeys
from leanmq_async.replies import CronTickResult, parse_cron_tick, text
from leanmq_async.store.base import StoreBase

__all__ = ["CronStore"]


class CronStore(StoreBase):
    """The periodic-job operations of :class:`~leanmq_async.store.Store` (issue 16)."""

    async def cron_tick(
        self,
        keys: QueueKeys,
        tick_ms: int,
        next_ms: int,
        late_ms: int,
        delay_ms: int,
        field: bytes,
        body: bytes,
        suffix: str,
    ) -> CronTickResult:
        """Enqueue tick ``tick_ms``'s run once across all workers (``lua/cron_tick.lua``)."""
        with translate_errors("cron tick"):
            reply = await self.scripts.cron_tick(
                keys=[keys.cron, keys.stream, keys.delayed, keys.delayed_data],
                args=[
                    tick_ms,
                    next_ms,
                    late_ms,
                    delay_ms,
                    field,
                    body,
                    suffix,
                    self.clock_shift_ms,
                ],
            )
        return parse_cron_tick(reply)

    async def cron_register(
        self, keys: QueueKeys, fields: Mapping[str, str | int], first_last_ms: int
    ) -> int:
        """Describe a job in its state hash; set its last tick if it has none; return it.

        One key, one MULTI: the description is rewritten by every worker that starts (the
        last one wins), the last tick only set on the job's first start.
        """
        with translate_errors("cron register"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(keys.cron, mapping=cast(Any, dict(fields)))
                pipe.hsetnx(keys.cron, "last", first_last_ms)
                pipe.hget(keys.cron, "last")
                *_, last = await pipe.execute()
        return int(last)

    async def cron_record(
        self, keys: QueueKeys, fields: Mapping[str, str | int | float], counter: str
    ) -> None:
        """Record a run's outcome in its job's state and count it (one key, one MULTI)."""
        with translate_errors("cron record"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(keys.cron, mapping=cast(Any, dict(fields)))
                pipe.hincrby(keys.cron, counter, 1)
                await pipe.execute()

    async def cron_states(self, keys: Sequence[QueueKeys]) -> list[dict[str, str]]:
        """The state hash of each job (empty when it has none): one round trip."""
        if not keys:
            return []
        with translate_errors("cron states"):
            async with self.client.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.hgetall(k.cron)
                replies: list[Any] = await pipe.execute()
        return [{text(f): text(v) for f, v in reply.items()} for reply in replies]
