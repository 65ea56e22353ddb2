"""Settling handled entries, one atomic script each, many of them in one pipeline.

Retry, dead-letter, expire on read, redeliver; and requeueing from the DLQ.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import anyio
import redis.exceptions as redis_errors

from leanmq_async.connection import translate_errors
from leanmq_async.exceptions import LeanMQError
from leanmq_async.keys import DEFAULT_LEVEL, QueueKeys
from leanmq_async.message import CancelOutcome, DeadLetterResult
from leanmq_async.replies import (
    ScriptReplyError,
    parse_cancel,
    parse_count,
    parse_dead_letter,
    parse_dead_letter_one,
    parse_defer,
    parse_expire_read,
    parse_rate_limit,
    parse_retry,
)
from leanmq_async.store.base import ID_BATCH, StoreBase
from leanmq_async.store_types import SettleCall

__all__ = ["Settling"]


class Settling(StoreBase):
    """The settling operations of :class:`~leanmq_async.store.Store`."""

    def retry_call(
        self, keys: QueueKeys, group: str, consumer: str, sid: str, delay_ms: int, attempts: int
    ) -> SettleCall:
        """Ack ``sid`` and schedule its retry in one step (``lua/retry.lua``), as one call
        of a :meth:`settle_many` batch: 1 done, 0 entry deleted (acked), -1 not owned,
        2 cancelled (left pending: dead-letter it instead)."""
        stream_keys = [keys.stream, keys.delayed, keys.delayed_data, keys.expiry, keys.cancelled]
        args = [group, consumer, sid, delay_ms, attempts, self.clock_shift_ms]
        return SettleCall(self.scripts.retry, stream_keys, args, parse_retry)

    # -- rate limits (issue 16) --

    async def rate_limit(
        self, logs: Sequence[str], counts: Sequence[int], limit: int, per_ms: int, slack_ms: int
    ) -> list[int]:
        """Ask for ``counts[i]`` handler starts from each rate-limit log ``logs[i]`` (keys
        of one slot) in one step (``lua/rate_limit.lua``): the starts granted, in order, in
        ms on the Redis clock, negated when it is now (start at once); positive: defer
        that message to it."""
        args = [limit, per_ms, self.clock_shift_ms, slack_ms, *counts]
        with translate_errors("rate limit"):
            reply = await self.scripts.rate_limit(keys=list(logs), args=args)
        return parse_rate_limit(reply, sum(counts))

    def defer_call(
        self, keys: QueueKeys, group: str, consumer: str, sid: str, start_ms: int
    ) -> SettleCall:
        """Ack ``sid`` and hold its copy in the delayed set until ``start_ms`` (its granted
        start), attempts unchanged (``lua/defer.lua``), as one call of a
        :meth:`settle_many` batch: 1 deferred, 0 entry deleted (acked), -1 not owned,
        2 cancelled (left pending: dead-letter it instead). ``keys``: the entry's level's
        (``QueueKeys.at``), so that the deferral comes back at its priority."""
        args = [group, consumer, sid, start_ms, self.clock_shift_ms]
        stream_keys = [keys.stream, keys.delayed, keys.delayed_data, keys.cancelled]
        return SettleCall(self.scripts.defer, stream_keys, args, parse_defer)

    # -- end rate limits --

    def dead_letter_call(
        self,
        keys: QueueKeys,
        group: str,
        consumer: str,
        source_name: str,
        item: tuple[str, str, str, str, int],
    ) -> SettleCall:
        """:meth:`dead_letter` of one item as one call of a :meth:`settle_many` batch:
        1 moved, 0 not (no longer owned by ``consumer``)."""
        args = [group, consumer, source_name, 1, *item]
        parse = functools.partial(parse_dead_letter_one, item[0])
        return SettleCall(self.scripts.dead_letter, [keys.stream, keys.dlq], args, parse)

    def expire_read_call(
        self,
        keys: QueueKeys,
        group: str,
        consumer: str,
        source_name: str,
        policy: str,
        sid: str,
        expires_at_ms: int,
    ) -> SettleCall:
        """Settle a read entry as expired if the Redis clock agrees (``lua/expire_read.lua``),
        as one call of a :meth:`settle_many` batch: 1 expired (acked or dead-lettered),
        0 still live (handle it), -1 expired but no longer owned by ``consumer``."""
        args = [group, consumer, policy, source_name, self.clock_shift_ms, sid, expires_at_ms]
        return SettleCall(
            self.scripts.expire_read, [keys.stream, keys.dlq], args, parse_expire_read
        )

    async def dead_letter(
        self,
        keys: QueueKeys,
        group: str,
        consumer: str,
        source_name: str,
        items: Sequence[tuple[str, str, str, str, int]],
    ) -> DeadLetterResult:
        """Move ``(id, reason, error_type, traceback, attempts)`` items to the DLQ atomically.

        Only entries pending in ``group`` move; with ``consumer`` set, only those this
        consumer still owns. The result says which ids moved and why the others did not.
        """
        args: list[Any] = [group, consumer, source_name, len(items)]
        for item in items:
            args.extend(item)
        with translate_errors("move to DLQ"):
            reply = await self.scripts.dead_letter(keys=[keys.stream, keys.dlq], args=args)
        return parse_dead_letter([item[0] for item in items], reply)

    async def redeliver(
        self, keys: QueueKeys, group: str, consumer: str, items: Sequence[tuple[str, int]]
    ) -> list[int]:
        """Re-add each owned ``(id, attempts)`` at the tail for ``group`` and ack the original.

        ``lua/retry.lua`` with no delay, pipelined: per id 1 (redelivered), 0 (entry gone
        from the stream: acked) or -1 (no longer owned by ``consumer``: untouched).
        """
        calls = [self.retry_call(keys, group, consumer, sid, 0, n) for sid, n in items]
        results = await self.settle_many(calls) if calls else []
        for result in results:
            if isinstance(result, LeanMQError):
                raise result
        return cast(list[int], results)

    async def cancel(
        self, keys: QueueKeys, source_name: str, message_id: str, marker_ms: int, channel: str
    ) -> tuple[CancelOutcome, str]:
        """Cancel one message (``lua/cancel.lua``) at any priority level: its outcome and
        the id it resolved to (a level's entry named with its level, ``priority.py``)."""
        keys = keys.at(DEFAULT_LEVEL)
        script_keys = [
            keys.stream,
            keys.dlq,
            keys.delayed,
            keys.delayed_data,
            keys.expiry,
            keys.dedup,
            keys.cancelled,
            # Every priority level's: the id names its level, or a delayed member or a
            # message_id is looked up in each (lua/cancel.lua).
            *keys.at(0).level_keys(),
            *keys.at(2).level_keys(),
        ]
        args: list[Any] = [
            message_id,
            source_name,
            marker_ms,
            channel,
            keys.base,
            self.clock_shift_ms,
        ]
        with translate_errors("cancel"):
            reply = await self.scripts.cancel(keys=script_keys, args=args)
        return parse_cancel(reply)

    async def cancel_markers(self, keys: QueueKeys) -> list[bytes]:
        """The entry names marked cancelled in the queue (a worker's reconcile)."""
        with translate_errors("ZRANGE cancelled"):
            ids = await self.client.zrange(keys.cancelled, 0, -1)
        return cast(list[bytes], ids)

    async def requeue(self, keys: QueueKeys, dlq_group: str, ids: Sequence[str]) -> int:
        """Requeue DLQ entries (each one atomically); one script call per ``ID_BATCH``."""
        moved = 0
        with translate_errors("requeue from DLQ"):
            for i in range(0, len(ids), ID_BATCH):
                reply = await self.scripts.requeue(
                    # The levels' streams: a level's entry goes back to its level.
                    keys=[keys.dlq, keys.stream, keys.expiry, keys.at(0).stream, keys.at(2).stream],
                    args=[dlq_group, *ids[i : i + ID_BATCH]],
                )
                moved += parse_count("requeue", reply)
        return moved

    async def settle_many(self, calls: Sequence[SettleCall]) -> list[int | LeanMQError]:
        """Run settling scripts in one pipeline; each call's reply, or its own error.

        Plain EVALSHAs (a worker loads its scripts at start), so no ``SCRIPT EXISTS``
        round trip and no extra ACL permission; calls that meet NOSCRIPT (Redis restarted
        since) load their script and run again. A broken connection fails the whole batch
        (:class:`LeanMQConnectionError`): the scripts check ownership first, so running a
        batch again never repeats a move.
        """
        replies = await self._evalsha_pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)]
        if missing:
            with translate_errors("SCRIPT LOAD"):
                for script in {id(calls[i].script): calls[i].script for i in missing}.values():
                    await self.client.script_load(script.script)
            again = await self._evalsha_pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        results: list[int | LeanMQError] = []
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                try:
                    with translate_errors("settle"):
                        raise reply
                except LeanMQError as exc:
                    results.append(exc)
            else:
                try:
                    results.append(call.parse(reply))
                except ScriptReplyError as exc:  # this call's own error, like a Redis one
                    results.append(exc)
        return results

    async def _evalsha_pipeline(self, calls: Sequence[SettleCall]) -> list[Any]:
        if self.cluster:
            return await self._each_concurrently(calls)
        with translate_errors("settle"):
            async with self.client.pipeline(transaction=False) as pipe:
                for call in calls:
                    pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
                return list(await pipe.execute(raise_on_error=False))

    async def _each_concurrently(self, calls: Sequence[SettleCall]) -> list[Any]:
        """Cluster mode: redis-py refuses EVALSHA in a cluster pipeline, so one call each."""
        replies: list[Any] = [None] * len(calls)

        async def run(i: int, call: SettleCall) -> None:
            try:
                replies[i] = await call.script(keys=call.keys, args=call.args)
            except (redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
                replies[i] = exc

        async with anyio.create_task_group() as tg:
            for i, call in enumerate(calls):
                tg.start_soon(run, i, call)
        return replies
