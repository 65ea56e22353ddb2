"""Writing messages: one plain XADD on the fast path, else one call of ``lua/send.lua``.

Concurrent sends share round trips (:mod:`leanmq_async.send_coalescer`): a send made
while another is in flight joins the next pipeline; a lone send goes out at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from leanmq_async._log import get_logger
from leanmq_async.cluster import Durability, NotReplicatedError, check_one_slot, write_and_wait
from leanmq_async.keys import DEFAULT_LEVEL
from leanmq_async.priority import level_id
from leanmq_async.replies import parse_send, text
from leanmq_async.send_errors import translate_send_errors
from leanmq_async.store.base import StoreBase
from leanmq_async.store_types import SendOp

__all__ = ["Sending"]


class Sending(StoreBase):
    """The sending operations of :class:`~leanmq_async.store.Store`."""

    async def xadd(
        self, stream: str, field: bytes, body: bytes, durability: Durability | None = None
    ) -> str:
        """The fast path: one plain XADD, for a message without TTL or delay.

        ``durability`` (default: the store's) waits for replicas after the write.
        """
        if durability is None:
            durability = self.durability
        lane = None if self.coalescer is None else self.coalescer.lane(durability)
        if lane is not None and not lane.enter():  # another send is in flight: join it
            command = ("XADD", stream, "*", field, body)
            return text(await lane.join(command, stream, None, "XADD", len(body)))
        try:
            with translate_send_errors("XADD", retries=self._retries):
                if durability is not None:
                    command = ("XADD", stream, "*", field, body)
                    sid = await write_and_wait(self.client, stream, command, durability)
                else:
                    sid = await self.client.xadd(stream, {field: body})
        finally:
            if lane is not None:
                lane.release()
        return text(sid)

    async def send(self, ops: Sequence[SendOp], durability: Durability | None = None) -> list[str]:
        """Write ``ops`` with one script call: all of them, or none on any error.

        ``durability`` (default: the store's) waits for replicas after the write.
        """
        if self.cluster:
            check_one_slot(ops)
        if durability is None:
            durability = self.durability
        # Without a deduplicated message the two dedup arguments are left out (6 per
        # message, not 8): bulk sends would otherwise pay for encoding them.
        deduped = any(op.dedup_ms > 0 for op in ops)
        # A priority level's stream needs the main stream's name (its groups are copied
        # to a level stream the send creates): then 7 keys per queue and a flag.
        levels = any(op.keys.level != DEFAULT_LEVEL for op in ops)
        key_index: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = [len(ops)]
        for op in ops:
            index = key_index.get(op.keys.stream)
            if index is None:
                index = key_index[op.keys.stream] = len(key_index) + 1
                keys += [op.keys.stream, op.keys.expiry, op.keys.delayed, op.keys.delayed_data]
                keys += [op.keys.dedup, op.keys.dedup_until]
                if levels:
                    keys.append(op.keys.at(DEFAULT_LEVEL).stream)
            args += [index, op.ttl_ms, op.delay_ms, op.field, op.body, op.member]
            if deduped:
                args += [op.message_id, op.dedup_ms]
        args.append(self.clock_shift_ms)
        if levels:
            args.append(1)
        script = self.scripts.send
        lane = None if self.coalescer is None else self.coalescer.lane(durability)
        try:
            if lane is not None and not lane.enter():  # another send is in flight: join it
                command = ("EVALSHA", script.sha, len(keys), *keys, *args)
                size = sum(len(op.body) for op in ops)
                reply = await lane.join(command, keys[0], script, "send", size)
            else:
                try:
                    with translate_send_errors("send", retries=self._retries):
                        if durability is not None:
                            command = ("EVALSHA", script.sha, len(keys), *keys, *args)
                            reply = await write_and_wait(
                                self.client, keys[0], command, durability, script
                            )
                        else:
                            reply = await script(keys=keys, args=args)
                finally:
                    if lane is not None:
                        lane.release()
        except NotReplicatedError as exc:
            exc.stream_ids = exc.stream_ids[: len(ops)]  # the duplicates' positions follow
            raise
        sent = parse_send(reply, len(ops))
        if sent.duplicates:
            self._count_duplicates(ops, sent.ids, sent.duplicates)
        if levels:
            # An entry of a priority level's stream is named with its level (priority.py);
            # a delayed message's schedule handle ('...|...') is already unique, and a
            # duplicate's id is the first send's as send.lua recorded it (named already).
            dups = set(sent.duplicates)
            return [
                sid if "|" in sid or i in dups else level_id(sid, op.keys.level)
                for i, (op, sid) in enumerate(zip(ops, sent.ids, strict=True))
            ]
        return sent.ids

    def _count_duplicates(self, ops: Sequence[SendOp], ids: list[str], dups: list[int]) -> None:
        self.dedup_hits += len(dups)
        log = get_logger("leanmq_async")
        for i in dups:
            op = ops[i]
            log.debug("send_deduplicated", queue=op.keys.base, message_id=op.message_id, id=ids[i])
