"""Writing messages: one plain XADD on the fast path, else one call of ``lua/send.lua``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from leanmq_async.cluster import Durability, check_one_slot, write_and_wait
from leanmq_async.connection import translate_errors
from leanmq_async.replies import parse_send, text
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
        with translate_errors("XADD"):
            if durability is not None:
                command = ("XADD", stream, "*", field, body)
                sid = await write_and_wait(self.client, stream, command, durability)
            else:
                sid = await self.client.xadd(stream, {field: body})
        return text(sid)

    async def send(self, ops: Sequence[SendOp], durability: Durability | None = None) -> list[str]:
        """Write ``ops`` with one script call: all of them, or none on any error.

        ``durability`` (default: the store's) waits for replicas after the write.
        """
        if self.cluster:
            check_one_slot(ops)
        if durability is None:
            durability = self.durability
        key_index: dict[str, int] = {}
        keys: list[str] = []
        args: list[Any] = [len(ops)]
        for op in ops:
            index = key_index.get(op.keys.base)
            if index is None:
                index = key_index[op.keys.base] = len(key_index) + 1
                keys += [op.keys.stream, op.keys.expiry, op.keys.delayed, op.keys.delayed_data]
            args += [index, op.ttl_ms, op.delay_ms, op.field, op.body, op.member]
        args.append(self.clock_shift_ms)
        script = self.scripts.send
        with translate_errors("send"):
            if durability is not None:
                command = ("EVALSHA", script.sha, len(keys), *keys, *args)
                reply = await write_and_wait(self.client, keys[0], command, durability, script)
            else:
                reply = await script(keys=keys, args=args)
        return parse_send(reply, len(ops))
