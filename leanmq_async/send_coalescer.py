"""Concurrent sends share round trips: the sends made while one is in flight go out together.

Many tasks each sending one message (a web app, one send per request) would pay a round
trip and a pooled connection each. Instead, per client and per durability setting, one
send at a time is *in flight*:

* a send made while nothing is in flight goes out at once, alone, exactly as without
  coalescing (no timer, no waiting for company): the single caller pays nothing;
* a send made while one is in flight waits in line; when the flight lands, everything
  in line (up to :data:`MAX_BATCH` commands or :data:`MAX_BATCH_BYTES` of payload) goes
  out as **one pipeline** of the same commands (``XADD`` on the fast path, one
  ``EVALSHA`` of ``lua/send.lua`` per send otherwise), sent by a task of its own, which
  goes on with the next batch while the line is not empty.

Per-message semantics stay: a pipeline is not a transaction, each command succeeds or
fails alone (a ``WRONGTYPE`` key, a refused message, a deduplicated id returning the
first send's id), and each caller gets its own id or its own error, translated as a
lone send's (:mod:`leanmq_async.send_errors`). A connection that breaks during a pipeline
makes every send of it "outcome unknown"; one that could not be opened, "not written".
With a :class:`~leanmq_async.cluster.Durability`, one ``WAIT``/``WAITAOF`` ends the
pipeline and covers all of its writes (same connection). On Redis Cluster a batch is
split per node: one pipeline per node, run concurrently, each failing alone.

Cancellation: a caller cancelled while waiting in line is taken out of it (its message is
not written); one cancelled after its batch left stops waiting, and its message is
written or not like any cancelled send. The batch itself runs in its own task, so no
caller's cancellation interrupts another caller's send.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Sequence
from typing import Any

import anyio
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from leanmq_async.cluster import (
    AnyRedis,
    Durability,
    check_wait_support,
    replication_error,
    wait_command,
)
from leanmq_async.exceptions import SendNotWrittenError, SendOutcomeUnknownError
from leanmq_async.send_errors import translate_send_errors

__all__ = ["MAX_BATCH", "MAX_BATCH_BYTES", "SendCoalescer"]

MAX_BATCH = 1000
"""Commands per pipeline at most: bounded work for Redis per round trip."""
MAX_BATCH_BYTES = 4 << 20
"""Payload bytes per pipeline at most (a pipeline holds one command even if larger)."""

_ROUNDS = 5  # pipelines per batch at most: NOSCRIPT and cluster redirects send again


class _Send:
    """One caller's command, waiting for its reply."""

    __slots__ = ("command", "future", "key", "script", "size", "what")

    def __init__(
        self,
        command: Sequence[Any],
        key: str,
        script: Any,
        what: str,
        size: int,
        future: asyncio.Future[Any],
    ) -> None:
        self.command = command
        self.key = key
        self.script = script
        self.what = what
        self.size = size
        self.future = future


class Lane:
    """The sends of one durability setting: at most one flight at a time."""

    __slots__ = ("_flusher", "_line", "_loop", "busy", "coalescer", "durability")

    def __init__(self, coalescer: SendCoalescer, durability: Durability | None) -> None:
        self.coalescer = coalescer
        self.durability = durability
        self.busy = False  # a send (alone) or a batch is in flight
        self._line: collections.deque[_Send] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self) -> bool:
        """True: nothing is in flight, send alone now (then :meth:`release`); False:
        :meth:`join` the line."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # First use, or a previous event loop's flight that never landed (that loop
            # was closed): its line cannot be served from this loop.
            self._line.clear()
            self._flusher, self._loop, self.busy = None, loop, False
        if self.busy:
            return False
        self.busy = True
        return True

    def release(self) -> None:
        """A lone send landed (or gave up): send what waits, else become idle."""
        self.busy = False
        if self._line:
            self._start()

    async def join(
        self, command: Sequence[Any], key: str, script: Any, what: str, size: int
    ) -> Any:
        """Wait in line; the command's reply, or its translated error raised here."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._line.append(_Send(command, key, script, what, size, future))
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled in line: the future is cancelled too, and skipped when a batch is
            # taken from the line (never sent). Cancelled just as its answer came: the
            # outcome is dropped, as a cancelled lone send's would be.
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning
            raise

    def _start(self) -> None:
        self.busy = True
        self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while True:
                batch = self._take()
                if batch:
                    await self.coalescer.run(batch, self.durability)
                if not self._line:
                    # The callers just answered may send again at once: let them join.
                    await asyncio.sleep(0)
                    if not self._line:
                        return
        finally:
            self.busy = False
            self._flusher = None
            while self._line:  # only when this task was cancelled (the loop is closing)
                _fail(self._line.popleft(), SendNotWrittenError("send abandoned: not written"))

    def _take(self) -> list[_Send]:
        """The next batch from the line, skipping the callers who gave up waiting."""
        batch: list[_Send] = []
        size = 0
        line = self._line
        while line and len(batch) < MAX_BATCH and (not batch or size < MAX_BATCH_BYTES):
            send = line[0]
            if batch and size + send.size > MAX_BATCH_BYTES:
                break
            line.popleft()
            if not send.future.done():
                batch.append(send)
                size += send.size
        return batch


class SendCoalescer:
    """Coalesces one store's concurrent sends; see the module docstring."""

    def __init__(self, client: AnyRedis, cluster: bool, retries: int) -> None:
        self._client = client
        self._cluster = cluster
        self._retries = retries
        self._lanes: dict[Durability | None, Lane] = {}

    def lane(self, durability: Durability | None) -> Lane:
        """The lane of sends with this durability (None: no WAIT)."""
        lane = self._lanes.get(durability)
        if lane is None:
            lane = self._lanes[durability] = Lane(self, durability)
        return lane

    async def run(self, batch: list[_Send], durability: Durability | None) -> None:
        """Send ``batch`` and answer every caller of it, whatever happens."""
        pending = batch
        try:
            if durability is not None:
                await check_wait_support(self._client, durability)
            for _ in range(_ROUNDS):
                if self._cluster:
                    pending = await self._on_nodes(pending, durability)
                else:
                    pending = await self._on_connection(pending, durability)
                if not pending:
                    return
                try:
                    await self._before_again(pending)
                except Exception as exc:  # noqa: BLE001 - the refused sends ran nowhere
                    for send in pending:
                        error = SendNotWrittenError(f"{send.what} not written: {exc}")
                        error.__cause__ = exc
                        _fail(send, error)
                    return
            for send in pending:
                refused = f"refused {_ROUNDS} times (unknown script, cluster redirect)"
                _fail(send, SendNotWrittenError(f"{send.what} not written: {refused}"))
        except Exception as exc:  # noqa: BLE001 - every caller gets it, nothing is lost
            for send in batch:
                _fail(send, self._translated(exc, send.what))
        except BaseException:
            for send in batch:  # this task was cancelled (the loop is closing)
                _fail(send, SendOutcomeUnknownError(f"{send.what} interrupted: outcome unknown"))
            raise

    async def _on_connection(
        self, sends: list[_Send], durability: Durability | None
    ) -> list[_Send]:
        """One pipeline on one pooled connection; the sends to send again."""
        commands = [send.command for send in sends]
        if durability is not None:
            commands.append(wait_command(durability))
        client: Any = self._client
        try:
            replies = await _pipeline(client.connection_pool, commands)
        except (redis_errors.RedisError, OSError) as exc:
            error: BaseException = exc
            if not isinstance(exc, redis_errors.RedisError):  # a socket error redis-py let out
                error = redis_errors.ConnectionError(f"pipeline failed: {exc!r}")
                error.__cause__ = exc
            for send in sends:
                _fail(send, self._translated(error, send.what))
            return []
        return self._answer(sends, replies, durability)

    async def _on_nodes(self, sends: list[_Send], durability: Durability | None) -> list[_Send]:
        """Cluster: one pipeline per node, concurrently; the sends to send again."""
        client = self._client
        assert isinstance(client, AsyncRedisCluster)
        await client.initialize()  # a no-op once the layout is known
        nodes: dict[str, tuple[Any, list[_Send]]] = {}
        for send in sends:
            try:
                node: Any = client.get_node_from_key(send.key)
            except redis_errors.SlotNotCoveredError as exc:
                client._initialize = True  # re-read the layout next time
                _fail(send, self._translated(exc, send.what))
                continue
            nodes.setdefault(node.name, (node, []))[1].append(send)
        again: list[_Send] = []

        async def on_node(node: Any, group: list[_Send]) -> None:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for send in group:
                        pipe.execute_command(*send.command, target_nodes=node)
                    if durability is not None:
                        pipe.execute_command(*wait_command(durability), target_nodes=node)
                    # Without WAIT, redis-py follows a redirect by sending that command
                    # again alone; with WAIT it must stay on this node's connection.
                    follow = durability is None
                    replies = await pipe.execute(raise_on_error=False, allow_redirections=follow)
            except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError) as exc:
                for send in group:
                    _fail(send, self._translated(exc, send.what))
                return
            again.extend(self._answer(group, list(replies), durability))

        async with anyio.create_task_group() as tg:
            for node, group in nodes.values():
                tg.start_soon(on_node, node, group)
        return again

    def _answer(
        self, sends: list[_Send], replies: list[Any], durability: Durability | None
    ) -> list[_Send]:
        """Hand each caller its reply or error; return those refused without running."""
        waited = replies.pop() if durability is not None else None
        again: list[_Send] = []
        for send, reply in zip(sends, replies, strict=True):
            if isinstance(reply, redis_errors.NoScriptError) and send.script is not None:
                again.append(send)
            elif self._cluster and isinstance(
                reply, redis_errors.AskError | redis_errors.TryAgainError
            ):
                again.append(send)  # not executed (MovedError is an AskError)
            elif isinstance(reply, Exception):
                _fail(send, self._translated(reply, send.what))
            elif durability is not None and (error := replication_error(reply, waited, durability)):
                _fail(send, error)
            elif not send.future.done():
                send.future.set_result(reply)
        return again

    async def _before_again(self, sends: list[_Send]) -> None:
        """Load the scripts Redis did not know; re-read a cluster's layout."""
        client: Any = self._client
        scripts = {id(s.script): s.script for s in sends if s.script is not None}
        for script in scripts.values():
            await client.script_load(script.script)
        if self._cluster:
            client._initialize = True
            await client.initialize()

    def _translated(self, exc: BaseException, what: str) -> BaseException:
        """``exc`` as a lone send would raise it (a new exception per caller)."""
        tb = exc.__traceback__
        try:
            with translate_send_errors(what, retries=self._retries):
                raise exc.with_traceback(tb)
        except BaseException as translated:  # noqa: BLE001 - handed to the caller
            exc.with_traceback(tb)
            return translated


async def _pipeline(pool: Any, commands: list[Sequence[Any]]) -> list[Any]:
    """``commands`` in one write on one pooled connection; each reply or its error.

    One socket timeout for the whole pipeline (not one timer per reply).
    """
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(_pack(commands, connection.encoder))
        replies: list[Any] = []
        try:
            async with asyncio.timeout(connection.socket_timeout):
                for _ in commands:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except redis_errors.ResponseError as exc:
                        replies.append(exc)
        except TimeoutError as exc:
            raise redis_errors.TimeoutError("Timeout reading from the pipeline's replies") from exc
    except BaseException:
        await connection.disconnect()  # replies may still be on their way: never reuse
        raise
    finally:
        await pool.release(connection)
    return replies


def _pack(commands: list[Sequence[Any]], encoder: Any) -> bytes:
    """The commands in the Redis protocol, as one buffer (redis-py's ``pack_commands``
    does the same, chunked for huge values, at about twice the cost per argument)."""
    out: list[bytes] = []
    append = out.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, str):
                arg = arg.encode(encoder.encoding, encoder.encoding_errors)
            elif not isinstance(arg, bytes):
                arg = encoder.encode(arg)  # numbers (refuses bools, as redis-py does)
            append(b"$%d\r\n" % len(arg))
            append(arg)
            append(b"\r\n")
    return b"".join(out)


def _fail(send: _Send, error: BaseException) -> None:
    if not send.future.done():
        send.future.set_exception(error)
