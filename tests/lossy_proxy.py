"""A TCP proxy in front of a redis-server that loses replies (issue 17's lost-reply tests).

Every command a client sends is forwarded whole. With probability ``drop`` (for the
commands ``when`` accepts), the proxy then breaks the connection instead of relaying the
reply: either after Redis answered (the command surely ran; the reply is swallowed) or at
once (the command may or may not run). The client sees its connection close after the
command left: a send's outcome is unknown. ``after_reply``: the share of drops that wait
for Redis's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from types import TracebackType

__all__ = ["LossyProxy"]


def _split_commands(buf: bytearray) -> list[bytes]:
    """Remove and return the complete RESP commands (arrays of bulk strings) at the start."""
    out: list[bytes] = []
    while True:
        end = _command_end(buf)
        if end is None:
            return out
        out.append(bytes(buf[:end]))
        del buf[:end]


def _command_end(buf: bytearray) -> int | None:
    if not buf.startswith(b"*"):
        line = buf.find(b"\r\n")  # an inline command
        return None if line < 0 else line + 2
    line = buf.find(b"\r\n")
    if line < 0:
        return None
    pos = line + 2
    for _ in range(int(buf[1:line])):
        head = buf.find(b"\r\n", pos)
        if head < 0:
            return None
        size = int(buf[pos + 1 : head])
        pos = head + 2 + size + 2
        if pos > len(buf):
            return None
    return pos


def command_name(command: bytes) -> bytes:
    """``b"EVALSHA"`` from a packed command."""
    parts = command.split(b"\r\n")
    return parts[2].upper() if command.startswith(b"*") and len(parts) > 2 else b""


class LossyProxy:
    """``async with LossyProxy(port, drop=0.2) as proxy:`` then connect to ``proxy.port``."""

    def __init__(
        self,
        upstream_port: int,
        *,
        drop: float = 0.0,
        after_reply: float = 0.7,
        seed: int = 17,
        when: Callable[[bytes], bool] = lambda name: True,
    ) -> None:
        self.upstream_port = upstream_port
        self.drop = drop
        self.after_reply = after_reply
        self.when = when
        self.random = random.Random(seed)
        self.port = 0
        self.dropped_after_reply = 0  # the command ran, its reply was swallowed
        self.dropped_at_once = 0  # the command was forwarded, the link cut at once
        self.forwarded = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        muted = asyncio.Event()  # set: swallow what Redis answers
        answered = asyncio.Event()  # set: Redis answered while muted
        relay = asyncio.create_task(self._relay(up_reader, writer, muted, answered))
        self._tasks.add(relay)
        buf = bytearray()
        try:
            while chunk := await reader.read(65536):
                buf += chunk
                for command in _split_commands(buf):
                    lose = self.when(command_name(command)) and self.random.random() < self.drop
                    if lose:
                        muted.set()
                    up_writer.write(command)
                    await up_writer.drain()
                    self.forwarded += 1
                    if lose:
                        if self.random.random() < self.after_reply:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(answered.wait(), 2.0)
                            self.dropped_after_reply += 1
                        else:
                            self.dropped_at_once += 1
                        return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            relay.cancel()
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(relay)
            self._tasks.discard(task)

    @staticmethod
    async def _relay(
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        muted: asyncio.Event,
        answered: asyncio.Event,
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await up_reader.read(65536):
                if muted.is_set():
                    answered.set()
                    continue
                writer.write(data)
                await writer.drain()
