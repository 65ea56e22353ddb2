"""Durable writes: a send followed by ``WAIT``/``WAITAOF`` on the same connection."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from leanmq_async.cluster.types import AnyRedis, is_cluster
from leanmq_async.connection import (
    ConnectionSettings,
)
from leanmq_async.exceptions import ConfigurationError, LeanMQError


class NotReplicatedError(LeanMQError):
    """A send was written to the primary, but fewer replicas than asked confirmed it.

    ``stream_ids`` holds what was written (it may still be handled, or be lost if the
    primary fails before replicating it); ``acknowledged`` how many replicas (or AOFs)
    confirmed. Sending again may duplicate the message.
    """

    def __init__(self, message: str, stream_ids: Sequence[str], acknowledged: int) -> None:
        super().__init__(message)
        self.stream_ids = list(stream_ids)
        self.acknowledged = acknowledged


@dataclass(frozen=True, slots=True)
class Durability:
    """Wait for replicas (``WAIT``) or AOF fsyncs (``WAITAOF``, Redis >= 7.2) after a send.

    replicas: replicas that must acknowledge the write.
    timeout_ms: how long to wait for them (> 0: ``WAIT`` with 0 would block forever).
    aof: wait for the primary's AOF fsync and ``replicas`` replicas' AOF fsyncs instead.
    """

    replicas: int = 1
    timeout_ms: int = 1000
    aof: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int):
            raise ConfigurationError(f"Durability.replicas must be an int, got {self.replicas!r}")
        if self.replicas < 0 or (self.replicas == 0 and not self.aof):
            raise ConfigurationError(
                "Durability.replicas must be >= 1 (>= 0 with aof=True, the local fsync)"
            )
        if isinstance(self.timeout_ms, bool) or not isinstance(self.timeout_ms, int):
            raise ConfigurationError(
                f"Durability.timeout_ms must be an int, got {self.timeout_ms!r}"
            )
        if self.timeout_ms < 1:
            raise ConfigurationError("Durability.timeout_ms must be >= 1 (0 waits forever)")

    def check(self, settings: ConnectionSettings) -> None:
        """The wait must end before the socket timeout, or the connection would be dropped."""
        if self.timeout_ms >= settings.socket_timeout * 1000:
            raise ConfigurationError(
                f"Durability.timeout_ms ({self.timeout_ms}) must be shorter than the "
                f"socket timeout ({settings.socket_timeout} s)"
            )


_versions: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()


async def _server_version(client: AnyRedis) -> tuple[int, ...]:
    """The server's version (on a cluster: the oldest node's), asked once per client."""
    cached = _versions.get(client)
    if cached is None:
        info: Any = await client.info("server")
        if is_cluster(client) and "redis_version" not in info:  # one dict per node
            versions = [v["redis_version"] for v in info.values()]
            text = min(versions, key=lambda v: tuple(int(x) for x in v.split(".")[:3]))
        else:
            text = info["redis_version"]
        cached = _versions[client] = tuple(int(x) for x in str(text).split(".")[:3])
    return cached


async def check_wait_support(client: AnyRedis, durability: Durability) -> None:
    """Refuse ``aof=True`` on a server without ``WAITAOF`` (Redis < 7.2), writing nothing."""
    if durability.aof and await _server_version(client) < (7, 2):
        version = ".".join(map(str, await _server_version(client)))
        raise ConfigurationError(
            f"Durability(aof=True) needs WAITAOF (Redis >= 7.2); the server is {version}. "
            "Use Durability(aof=False) (WAIT for replicas) instead; nothing was written"
        )


def wait_command(durability: Durability) -> tuple[Any, ...]:
    """The ``WAIT``/``WAITAOF`` command that waits as ``durability`` asks."""
    if durability.aof:
        return ("WAITAOF", 1, durability.replicas, durability.timeout_ms)
    return ("WAIT", durability.replicas, durability.timeout_ms)


def _confirmed(reply: Any, durability: Durability) -> tuple[bool, int, str]:
    """``(enough, count, what)`` for a WAIT / WAITAOF reply."""
    if durability.aof:
        local, replicas = int(reply[0]), int(reply[1])
        enough = local >= 1 and replicas >= durability.replicas
        return enough, replicas, f"local AOF fsync {local}/1, replica AOF fsyncs {replicas}"
    count = int(reply)
    return count >= durability.replicas, count, f"{count} replica(s) acknowledged"


async def write_and_wait(
    client: AnyRedis,
    key: str,
    command: Sequence[Any],
    durability: Durability,
    script: Any = None,
) -> Any:
    """Run ``command`` (a write on ``key``'s slot) then WAIT/WAITAOF on the same connection.

    WAIT counts the replicas that caught up with *this connection's* writes, so the two
    go in one pipeline on one connection (on a cluster: pinned to the primary of
    ``key``'s slot, redirects not followed inside the pipeline). A refusal that means
    nothing was executed (NOSCRIPT with ``script`` given, MOVED, ASK, TRYAGAIN) is
    retried a few times. Returns the write's reply, or raises :class:`NotReplicatedError`
    (the write happened) when too few confirmed. Other Redis errors propagate.
    """
    await check_wait_support(client, durability)
    wait = wait_command(durability)
    for _ in range(5):
        if isinstance(client, AsyncRedisCluster):
            await client.initialize()  # a no-op once the layout is known
            try:
                node = client.get_node_from_key(key)
            except redis_errors.SlotNotCoveredError:
                client._initialize = True  # re-read the layout next time
                raise
            async with client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command, target_nodes=node)
                pipe.execute_command(*wait, target_nodes=node)
                reply, waited = await pipe.execute(raise_on_error=False, allow_redirections=False)
        else:
            async with client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*command)
                pipe.execute_command(*wait)
                reply, waited = await pipe.execute(raise_on_error=False)
        if isinstance(reply, redis_errors.NoScriptError) and script is not None:
            sha = await client.script_load(script.script)
            command = (command[0], sha, *command[2:])
            continue
        if isinstance(reply, redis_errors.AskError | redis_errors.TryAgainError):
            # Not executed (MovedError is an AskError): re-read the layout, try again.
            assert isinstance(client, AsyncRedisCluster)
            client._initialize = True
            await client.initialize()
            continue
        if isinstance(reply, Exception):
            raise reply
        error = replication_error(reply, waited, durability)
        if error is not None:
            raise error
        return reply
    raise redis_errors.ConnectionError(f"{command[0]} kept being redirected; nothing was written")


def replication_error(reply: Any, waited: Any, durability: Durability) -> NotReplicatedError | None:
    """The :class:`NotReplicatedError` for a write's ``reply`` followed by ``waited``
    (the WAIT/WAITAOF reply, or its error), or None when enough confirmed."""
    ids = _ids(reply)
    wait = wait_command(durability)[0]
    if isinstance(waited, Exception):
        error = NotReplicatedError(
            f"{_written(ids)} to the primary, but {wait} failed ({waited}): "
            "replication not confirmed",
            ids,
            0,
        )
        error.__cause__, error.__suppress_context__ = waited, True
        return error
    enough, count, what = _confirmed(waited, durability)
    if enough:
        return None
    return NotReplicatedError(
        f"{_written(ids)} to the primary, but only {what} within "
        f"{durability.timeout_ms} ms (wanted {durability.replicas}): the write may be "
        "lost if the primary fails now",
        ids,
        count,
    )


def _written(ids: Sequence[str]) -> str:
    """``written 2 message(s) (1-0, 1-1)``: what a NotReplicatedError reports (ids elided)."""
    shown = ", ".join(ids[:3]) + (f", ... {ids[-1]}" if len(ids) > 3 else "")
    return f"written {len(ids)} message(s) ({shown})"


def _ids(reply: Any) -> list[str]:
    items = reply if isinstance(reply, list) else [reply]
    return [i.decode() if isinstance(i, bytes) else str(i) for i in items]
