"""The boundary to Redis: how clients are built, and how Redis errors are translated.

redis-py's defaults are made for caches, not queues, so each one is chosen here:

* **No automatic command retries** (redis-py retries a command on connection errors):
  a retried ``XADD`` whose first reply was lost writes the message twice, and a retried
  ``XREADGROUP`` loses the first reply's messages to a pending list. The library retries
  where it is safe (worker loops, with backoff); a producer gets
  :class:`~leanmq_async.exceptions.SendNotWrittenError` or
  :class:`~leanmq_async.exceptions.SendOutcomeUnknownError` (see
  :mod:`leanmq_async.send_errors`) and retries with the same ``message_id``.
* **A socket timeout longer than any blocking read we issue** (redis-py's 5 s would kill
  a longer ``XREADGROUP BLOCK``): worker reads block at most ``block_ms`` and
  ``get_messages`` splits long waits into chunks, so a dead peer is still noticed.
* **A blocking, first-come-first-served pool** (:class:`FairConnectionPool`) that waits
  for a free connection (up to ``pool_timeout``) instead of raising, so hundreds of
  concurrent handlers that call Redis queue up, in order, instead of failing.
* **Health checks** on connections idle for ``health_check_interval`` seconds, so the first
  command after a long idle period does not fail on a connection a firewall dropped.
* ``decode_responses=False``: payloads are bytes and stay binary-safe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis import DriverInfo
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from leanmq_async._version import __version__
from leanmq_async.exceptions import (
    ConfigurationError,
    LeanMQConnectionError,
    LeanMQError,
    RedisOperationError,
)

__all__ = ["ConnectionSettings", "build_client", "check_borrowed_client", "translate_errors"]


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How leanmq_async connects when it owns the Redis client."""

    socket_timeout: float = 30.0
    socket_connect_timeout: float = 5.0
    max_connections: int = 64
    pool_timeout: float = 30.0
    health_check_interval: float = 30.0

    def __post_init__(self) -> None:
        for name in ("socket_timeout", "socket_connect_timeout", "pool_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be > 0 seconds")
        if self.max_connections < 2:
            raise ConfigurationError("max_connections must be at least 2 (reads block one)")


def url_auth(username: str | None, password: str | None) -> str:
    """The ``user:password@`` part of a Redis URL (quoted), or "" without credentials."""
    from urllib.parse import quote

    if password is None and username is None:
        return ""
    return f"{quote(username or '', safe='')}:{quote(password or '', safe='')}@"


def build_url(
    host: str, port: int, db: int, password: str | None, username: str | None, ssl: bool
) -> str:
    """A redis URL from LeanMQ's keyword arguments."""
    auth = url_auth(username, password)
    scheme = "rediss" if ssl else "redis"
    return f"{scheme}://{auth}{host}:{port}/{db}"


class FairConnectionPool(aioredis.ConnectionPool):
    """A connection pool that waits for a free connection and serves waiters in order.

    redis-py's ``BlockingConnectionPool`` wakes a waiter through a condition that it must
    retake, and a task asking at that moment takes the connection first: with hundreds of
    handlers calling Redis in a loop, some callers (the worker's fetch, lease and ack steps
    among them) wait as long as the pressure lasts. Here a released connection is handed
    straight to the oldest waiter, and nobody jumps the line. The common case (nobody
    waits, a connection is free) takes no lock and arms no timer; the wait is bounded by
    ``timeout`` seconds (``pool_timeout``), then ``ConnectionError("No connection
    available.")`` as in redis-py.
    """

    def __init__(self, *args: Any, timeout: float | None = 20.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self._waiters and (
            self._available_connections or len(self._in_use_connections) < self.max_connections
        ):
            connection = self.get_available_connection()  # type: ignore[no-untyped-call]
        else:
            connection = await self._wait_for_connection()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def _wait_for_connection(self) -> Any:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection just as the wait ended: pass it on, never drop it.
                await self.release(waiter.result())
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise redis_errors.ConnectionError("No connection available.") from exc
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def release(self, connection: Any) -> None:
        self._in_use_connections.discard(connection)
        if connection.should_reconnect():
            await connection.disconnect()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_use_connections.add(connection)
                waiter.set_result(connection)
                return
        self._available_connections.append(connection)


@functools.cache
def client_identity() -> dict[str, Any]:
    """How our connections name themselves (``CLIENT SETINFO``), computed once.

    Without it, redis-py reads its package metadata from disk for every new connection
    (~1 ms each): felt when a burst of failures grows the pool by dozens of connections.
    Servers show ``redis-py(leanmq-async_v…)`` in ``CLIENT LIST``.
    """
    identity = DriverInfo(lib_version=redis.__version__)
    return {"driver_info": identity.add_upstream_driver("leanmq-async", __version__)}


def build_client(url: str, settings: ConnectionSettings, **extra: Any) -> aioredis.Redis:
    """An owned ``redis.asyncio`` client for ``url`` (redis://, rediss://, unix://)."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"unsupported Redis URL {url!r}: use redis://, rediss:// (TLS) or unix://"
        )
    if not url.startswith("unix://"):
        # TCP only: a unix socket connection refuses the keyword (TypeError at first use).
        extra.setdefault("socket_keepalive", True)
    try:
        pool = FairConnectionPool.from_url(
            url,
            max_connections=settings.max_connections,
            timeout=settings.pool_timeout,
            socket_timeout=settings.socket_timeout,
            socket_connect_timeout=settings.socket_connect_timeout,
            health_check_interval=settings.health_check_interval,
            retry=AsyncRetry(NoBackoff(), 0),
            decode_responses=False,
            **client_identity(),
            **extra,
        )
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {url!r}: {exc}") from exc
    if pool.connection_kwargs.get("decode_responses"):
        # URL query options override keywords in redis-py (`?decode_responses=true`).
        raise ConfigurationError(
            f"invalid Redis URL {url!r}: decode_responses must stay off (payloads are binary)"
        )
    return aioredis.Redis.from_pool(pool)


def check_borrowed_client(client: Any) -> None:
    """Refuse a user's client that cannot carry binary payloads."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:  # a RedisCluster keeps its connection settings itself
        kwargs = getattr(client, "connection_kwargs", {})
    if kwargs.get("decode_responses"):
        raise ConfigurationError(
            "the Redis client passed to LeanMQ decodes responses; create it with "
            "decode_responses=False (payloads are binary)"
        )


class translate_errors:  # used like a function: `with translate_errors():`
    """Translate redis-py exceptions raised inside the block into leanmq_async's own."""

    __slots__ = ("what",)

    def __init__(self, what: str = "redis command") -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Returns None (never swallows): a type checker then knows code after the block
        # only runs when the block did not raise.
        if isinstance(exc, redis_errors.RedisClusterException):  # not a RedisError
            _translate_cluster_exception(self.what, exc)
        if exc is None or not isinstance(exc, redis_errors.RedisError):
            return None
        if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
            raise LeanMQConnectionError(f"{self.what} failed: Redis unreachable ({exc})") from exc
        if _not_executed(exc):
            # A refusal that means "not here, not now" (a demoted primary, a cluster
            # failing over): nothing was executed, so it is retried like a broken connection.
            raise LeanMQConnectionError(
                f"{self.what} failed: Redis unavailable for writes ({exc})"
            ) from exc
        if isinstance(exc, redis_errors.ResponseError):
            raise RedisOperationError(f"{self.what} failed: {exc}") from exc
        raise LeanMQError(f"{self.what} failed: {exc}") from exc


# Error replies after which the command was not executed and may be retried elsewhere or
# later: a primary demoted to a replica (READONLY; a blocked read it released with
# UNBLOCKED), a replica cut off from its primary (MASTERDOWN), a cluster failing over or
# resharding (CLUSTERDOWN, TRYAGAIN, a redirect redis-py gave up following).
_NOT_EXECUTED_PREFIXES = ("READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK ")


def _not_executed(exc: redis_errors.RedisError) -> bool:
    if isinstance(
        exc,
        redis_errors.ReadOnlyError
        | redis_errors.ClusterError
        | redis_errors.TryAgainError
        | redis_errors.AskError,
    ):
        return True
    text = str(exc)
    # Redis 7 keeps the error code of a failed call inside a script, after a prefix.
    if text.startswith(_NOT_EXECUTED_PREFIXES) or "READONLY You can't write" in text:
        return True
    return text.startswith("UNBLOCKED") and "instance state changed" in text


def _translate_cluster_exception(what: str, exc: redis_errors.RedisClusterException) -> None:
    """redis-py's client-side cluster errors: topology trouble, or a cross-slot request."""
    text = str(exc)
    if isinstance(exc, redis_errors.SlotNotCoveredError) or text.startswith(
        ("Redis Cluster cannot be connected", "All slots are not covered", "startup_nodes")
    ):
        raise LeanMQConnectionError(f"{what} failed: Redis Cluster unavailable ({exc})") from exc
    cross_slot = "same" in text and "slot" in text
    if isinstance(exc, redis_errors.CrossSlotTransactionError) or cross_slot:
        raise ConfigurationError(
            f"{what} failed: its keys are in different Redis Cluster slots ({exc})"
        ) from exc
    raise LeanMQError(f"{what} failed: {exc}") from exc
