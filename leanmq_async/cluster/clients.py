"""Building cluster and sentinel clients with the single-node client's deliberate settings."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from leanmq_async.cluster.types import CLUSTER_SCHEMES, SENTINEL_SCHEMES
from leanmq_async.cluster.urls import (
    SentinelAddress,
    parse_cluster_url,
    parse_sentinel_url,
)
from leanmq_async.connection import (
    ConnectionSettings,
    FairConnectionPool,
    build_client,
    client_identity,
)
from leanmq_async.exceptions import ConfigurationError

_NO_RETRY = (NoBackoff(), 0)
# Set while a task holds a slot of the cluster limiter: a pipeline that follows a
# redirect calls execute_command inside its own slot and must not wait for a second one.
_holding: contextvars.ContextVar[bool] = contextvars.ContextVar("leanmq_holding", default=False)
# Errors after which the cluster's layout may have changed (failover, resharding).
_TOPOLOGY_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterError,
    redis_errors.SlotNotCoveredError,
)


class _Limiter:
    """At most ``size`` commands in flight, waiters served in order, each for ``timeout``."""

    def __init__(self, size: int, timeout: float) -> None:
        self._slots = asyncio.Semaphore(size)
        self._turnstile = asyncio.Lock()
        self._timeout = timeout

    async def acquire(self) -> bool:
        """Take a slot; False (and nothing taken) if this task already holds one."""
        if _holding.get():
            return False
        try:
            async with asyncio.timeout(self._timeout), self._turnstile:
                await self._slots.acquire()
        except TimeoutError as exc:
            raise redis_errors.ConnectionError("No connection available.") from exc
        _holding.set(True)
        return True

    def release(self) -> None:
        """Give back the slot taken by :meth:`acquire` (only when it returned True)."""
        _holding.set(False)
        self._slots.release()


class _LimitedPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = self.cluster_client
        assert isinstance(client, LeanMQRedisCluster)
        acquired = False
        try:
            acquired = await client._limiter.acquire()
            return await super().execute(raise_on_error, allow_redirections)
        except _TOPOLOGY_ERRORS:
            client._stale()
            raise
        finally:
            if acquired:
                client._limiter.release()


class LeanMQRedisCluster(AsyncRedisCluster):
    """``redis.asyncio.cluster.RedisCluster`` with the single-node client's pool behaviour.

    redis-py's cluster pools raise at once when a node's connections are all in use;
    here a command waits (in order, up to ``pool_timeout``) for one of
    ``max_connections`` slots instead, like the blocking pool of a single-node client.
    After a connection or cluster error (also in a pipeline, where redis-py does not do
    it) the topology is re-read before the next command, so a promoted replica is found.

    Every command waits until the layout is known before it is routed: redis-py (seen
    with 8.1) sends one issued before then to a random node, and a new client's first
    commands, sent concurrently, met ``MOVED`` replies (see ``reinitialize_steps=0`` in
    :func:`build_cluster_client` for what those did to the other tasks' commands).
    """

    def __init__(self, *args: Any, pool_timeout: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limiter = _Limiter(int(kwargs.get("max_connections", 64)), pool_timeout)

    def _stale(self) -> None:
        self._initialize = True

    async def _determine_slot(self, command: str, *args: Any) -> int:
        # redis-py asks a node (COMMAND GETKEYS, a round trip) for the keys of a command
        # whose keys move, as XREADGROUP's do: the worker's every read. They are the first
        # half of what follows STREAMS.
        if command.upper() == "XREADGROUP":
            words = [a.upper() if isinstance(a, str | bytes) else a for a in args]
            marker = next((w for w in (b"STREAMS", "STREAMS") if w in words), None)
            if marker is not None:
                rest = args[words.index(marker) + 1 :]
                slots = {self.keyslot(key) for key in rest[: len(rest) // 2]}
                if len(slots) == 1:
                    return slots.pop()
        return await super()._determine_slot(command, *args)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:
            # Once, under redis-py's lock (the others wait for it, then skip it).
            await self.initialize()
        acquired = await self._limiter.acquire()
        try:
            return await super().execute_command(*args, **kwargs)
        except redis_errors.MaxConnectionsError:
            raise
        except _TOPOLOGY_ERRORS:
            self._stale()
            raise
        finally:
            if acquired:
                self._limiter.release()

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            raise ConfigurationError("shard_hint is not supported in cluster mode")
        # mypy sees redis-py's ClusterPipeline as abstract (an attribute it sets itself).
        return _LimitedPipeline(self, transaction)  # type: ignore[abstract]


def build_cluster_client(
    nodes: Sequence[tuple[str, int]],
    settings: ConnectionSettings,
    *,
    username: str | None = None,
    password: str | None = None,
    ssl: bool = False,
) -> LeanMQRedisCluster:
    """An owned cluster client, discovered from ``nodes`` (any reachable one suffices)."""
    return LeanMQRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        # No command retries after connection errors; MOVED/ASK are still followed.
        retry=AsyncRetry(*_NO_RETRY),
        # A MOVED updates its slot. With redis-py's default (5) every fifth MOVED closes
        # every connection of every node, failing the commands other tasks have in
        # flight (after a failover, or a resharding, under concurrent load).
        reinitialize_steps=0,
        # One shard down must not stop the queues of the others.
        require_full_coverage=False,
        max_connections=settings.max_connections,
        pool_timeout=settings.pool_timeout,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.socket_connect_timeout,
        socket_keepalive=True,
        health_check_interval=settings.health_check_interval,
        decode_responses=False,
        **client_identity(),
        username=username,
        password=password,
        ssl=ssl,
    )


class _FairSentinelPool(SentinelConnectionPool, FairConnectionPool):
    """Sentinel's pool (asks the sentinels where the primary is) that waits its turn."""


class _SentinelManagedRedis(aioredis.Redis):
    """A client of the primary that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


def build_sentinel_client(address: SentinelAddress, settings: ConnectionSettings) -> aioredis.Redis:
    """An owned client of the primary of ``address.service_name``, as sentinels report it."""
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_connect_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "retry": AsyncRetry(*_NO_RETRY),
        "decode_responses": False,
    }
    if address.ssl:
        sentinel_kwargs["ssl"] = True
    if address.sentinel_username is not None:
        sentinel_kwargs["username"] = address.sentinel_username
    if address.sentinel_password is not None:
        sentinel_kwargs["password"] = address.sentinel_password
    sentinel = Sentinel(address.sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client: aioredis.Redis = sentinel.master_for(
        address.service_name,
        redis_class=_SentinelManagedRedis,
        connection_pool_class=_FairSentinelPool,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.socket_connect_timeout,
        socket_keepalive=True,
        health_check_interval=settings.health_check_interval,
        retry=AsyncRetry(*_NO_RETRY),
        decode_responses=False,
        **client_identity(),
        db=address.db,
        username=address.username,
        password=address.password,
        ssl=address.ssl,
    )
    return client


def build_redis_client(
    url: str, settings: ConnectionSettings, *, cluster: bool = False
) -> aioredis.Redis | LeanMQRedisCluster:
    """The owned client for any URL LeanMQ accepts (see the module docs for formats)."""
    scheme = url.partition("://")[0]
    if scheme in SENTINEL_SCHEMES:
        if cluster:
            raise ConfigurationError("cluster=True contradicts a redis+sentinel:// URL")
        return build_sentinel_client(parse_sentinel_url(url), settings)
    if cluster or scheme in CLUSTER_SCHEMES:
        if scheme == "unix":
            raise ConfigurationError("Redis Cluster cannot be reached over a unix socket")
        address = parse_cluster_url(url)
        return build_cluster_client(
            address.nodes,
            settings,
            username=address.username,
            password=address.password,
            ssl=address.ssl,
        )
    return build_client(url, settings)
