"""Redis Cluster and Sentinel: building their clients, hash slots, and durable writes.

Connecting
----------

``LeanMQ`` takes, besides ``redis://``, ``rediss://`` and ``unix://`` URLs:

* ``redis+cluster://[user[:password]@]host:port[,host:port...][/0]`` (``rediss+cluster://``
  for TLS): a Redis Cluster, discovered from any of the listed nodes (list several, so
  the client starts while one is down). ``LeanMQ(url, cluster=True)`` reads a plain
  ``redis://host:port`` URL the same way; ``client=`` takes your own
  ``redis.asyncio.cluster.RedisCluster`` (borrowed, never closed by LeanMQ; it keeps the
  retry settings you gave it, and redis-py's behaviour: ``await client.initialize()``
  before its first commands run concurrently).
* ``redis+sentinel://[user[:password]@]host:port[,host:port...]/service_name[/db]``
  (``rediss+sentinel://`` for TLS to the sentinels and the data nodes): the primary of
  ``service_name`` as the listed sentinels report it (default sentinel port 26379).
  User and password are the data nodes'; sentinels that need their own take
  ``?sentinel_username=...&sentinel_password=...``. ``LeanMQ(sentinels=[(host, port)],
  service_name="mymaster")`` builds the same client from keywords.

Both clients keep the single-node client's deliberate settings (see
:mod:`leanmq_async.connection`): **no command is retried after a connection error** (a
retried ``XADD`` whose reply was lost writes twice), a socket timeout longer than any
blocking read, a bounded wait for a free connection, health checks, binary payloads.
What they still do by themselves, because nothing was executed:

* the cluster client follows ``MOVED`` and ``ASK`` redirects (a redirect is a refusal;
  a ``MOVED`` updates the one slot it names, without closing the connections other
  commands are using), and after a connection error re-reads the topology before the
  next command, so once a replica is promoted the library's own retries (the worker's
  fetch loop, its settling steps, with backoff) reach the new primary;
* the sentinel client asks the sentinels for the primary's address whenever it opens a
  connection, and drops a connection that answers ``READONLY`` (a demoted primary).

Every error that means "not executed here, try again later" (``READONLY``,
``CLUSTERDOWN``, ``TRYAGAIN``, ``MASTERDOWN``, an uncovered slot, a blocked read
unblocked by a role change) is translated to
:class:`~leanmq_async.exceptions.LeanMQConnectionError`, never handed to a handler.

Atomicity on a cluster
----------------------

Every key of one queue shares the hash tag ``{name}``, so each queue's scripts run in
one slot. An atomic multi-queue write (a transaction, the send script) needs every
queue it touches in one slot: queue names cannot contain braces, so in practice **a
cluster transaction covers one queue** (or queues whose names happen to hash to the
same slot). A transaction that adds a queue of another slot fails with
:class:`~leanmq_async.exceptions.ConfigurationError` at that ``send_message``, before
anything is written. ``list_queues`` and the other multi-queue reads are pipelined per
node and work across slots.

Durability
----------

A write acknowledged by a primary is lost if the primary dies before its replicas got it
(replication is asynchronous). ``LeanMQ(..., durability=Durability(replicas=1))`` (or
``mq.transaction(durability=...)`` for one atomic send) follows every send with ``WAIT``
on the same connection: the send returns once ``replicas`` replicas acknowledged it,
and raises :class:`NotReplicatedError` (the message *was* written to the primary; its
stream ids are on the exception) when fewer did within ``timeout_ms``. The trade-off:
each send takes one more replica round trip (and up to ``timeout_ms`` when a replica is
slow or gone), in exchange for surviving a failover: a confirmed message is on a replica
that can be promoted. ``aof=True`` waits with ``WAITAOF`` (Redis >= 7.2) until the write
is fsynced to the primary's AOF and to ``replicas`` replicas' AOFs; older servers are
refused with :class:`~leanmq_async.exceptions.ConfigurationError` before anything is
written. Without ``durability`` (the default) a send is one command, as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, ClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot

from leanmq_async.connection import (
    ConnectionSettings,
    FairConnectionPool,
    build_client,
    client_identity,
    url_auth,
)
from leanmq_async.exceptions import ConfigurationError, LeanMQError
from leanmq_async.store_types import SendOp

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "AnyRedis",
    "Durability",
    "LeanMQRedisCluster",
    "NotReplicatedError",
    "build_cluster_client",
    "build_redis_client",
    "build_sentinel_client",
    "check_one_slot",
    "check_wait_support",
    "is_cluster",
    "parse_cluster_url",
    "parse_sentinel_url",
    "queue_slot",
    "sentinel_url",
    "write_and_wait",
]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

AnyRedis = aioredis.Redis | AsyncRedisCluster
"""A client LeanMQ can work with: single node (or Sentinel-managed), or a cluster."""


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


# -- slots ---------------------------------------------------------------------------------


def is_cluster(client: object) -> bool:
    return isinstance(client, AsyncRedisCluster)


def queue_slot(stream_key: str) -> int:
    """The hash slot of a queue's keys (every key of a queue shares its tag)."""
    return int(key_slot(stream_key.encode()))


def check_one_slot(ops: Iterable[SendOp]) -> None:
    """Refuse an atomic send whose queues are in different cluster slots."""
    slots: dict[int, str] = {}
    for op in ops:
        slots.setdefault(queue_slot(op.keys.stream), op.keys.base)
    if len(slots) > 1:
        names = ", ".join(f"{name!r} (slot {slot})" for slot, name in sorted(slots.items()))
        raise ConfigurationError(
            f"on Redis Cluster an atomic send covers queues of one hash slot; {names} "
            "differ. Send to each queue in its own transaction (nothing was written)."
        )


# -- URLs ----------------------------------------------------------------------------------


def _split_url(url: str, schemes: Sequence[str]) -> tuple[str, str, str, str, dict[str, str]]:
    """``(scheme, userinfo, hosts, path, query)`` of a multi-host URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in schemes:
        raise ConfigurationError(f"unsupported URL {url!r}: use {' or '.join(schemes)}://")
    rest, _, fragment = rest.partition("#")
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    query = {}
    for name, values in parse_qs(query_text, keep_blank_values=True).items():
        query[name] = values[-1]
    if fragment:
        raise ConfigurationError(f"invalid URL {url!r}: unexpected fragment")
    return scheme, userinfo, hosts, path, query


def _hosts(text: str, default_port: int, url: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigurationError(f"invalid port {port_text!r} in {url!r}") from None
        if not host or not 0 < port < 65536:
            raise ConfigurationError(f"invalid host:port {item!r} in {url!r}")
        out.append((unquote(host), port))
    if not out:
        raise ConfigurationError(f"no host in {url!r}")
    return out


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    ssl: bool


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    sentinels: list[tuple[str, int]]
    service_name: str
    db: int
    username: str | None
    password: str | None
    ssl: bool
    sentinel_username: str | None
    sentinel_password: str | None


def _no_options(query: dict[str, str], url: str, allowed: Sequence[str] = ()) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        raise ConfigurationError(
            f"unsupported option(s) {', '.join(unknown)} in {_redact(url)!r}{hint}; "
            "connection settings are LeanMQ's (ConnectionSettings)"
        )


def parse_cluster_url(url: str) -> ClusterAddress:
    """Parse ``redis+cluster://[user[:password]@]host:port[,host:port...][/0]``.

    A plain ``redis://`` / ``rediss://`` URL is accepted too (for ``cluster=True``).
    """
    scheme, userinfo, hosts, path, query = _split_url(url, (*CLUSTER_SCHEMES, "redis", "rediss"))
    _no_options(query, url)
    if path.strip("/") not in ("", "0"):
        raise ConfigurationError(f"Redis Cluster has only database 0, not {path!r} ({url!r})")
    username, password = _credentials(userinfo)
    return ClusterAddress(_hosts(hosts, 6379, url), username, password, scheme.startswith("rediss"))


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Parse ``redis+sentinel://[user[:password]@]host:port[,...]/service_name[/db]``."""
    scheme, userinfo, hosts, path, query = _split_url(url, SENTINEL_SCHEMES)
    _no_options(query, url, ("sentinel_username", "sentinel_password"))
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ConfigurationError(
            f"invalid Sentinel URL {_redact(url)!r}: use "
            "redis+sentinel://host:port[,host:port...]/service_name[/db]"
        )
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise ConfigurationError(f"invalid database {parts[1]!r} in {_redact(url)!r}") from None
    username, password = _credentials(userinfo)
    return SentinelAddress(
        sentinels=_hosts(hosts, 26379, url),
        service_name=parts[0],
        db=db,
        username=username,
        password=password,
        ssl=scheme.startswith("rediss"),
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


def sentinel_url(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    db: int = 0,
    username: str | None = None,
    password: str | None = None,
    ssl: bool = False,
) -> str:
    """The ``redis+sentinel://`` URL for LeanMQ's ``sentinels=``/``service_name=`` keywords."""
    if not sentinels:
        raise ConfigurationError("sentinels must list at least one (host, port)")
    if not service_name:
        raise ConfigurationError("service_name is required with sentinels")
    auth = url_auth(username, password)
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sentinels)
    scheme = "rediss+sentinel" if ssl else "redis+sentinel"
    return f"{scheme}://{auth}{hosts}/{quote(service_name, safe='')}/{db}"


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"


# -- clients -------------------------------------------------------------------------------

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


# -- durable writes ------------------------------------------------------------------------

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


def _wait_command(durability: Durability) -> tuple[Any, ...]:
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
    wait = _wait_command(durability)
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
        ids = _ids(reply)
        if isinstance(waited, Exception):
            raise NotReplicatedError(
                f"{_written(ids)} to the primary, but {wait[0]} failed ({waited}): "
                "replication not confirmed",
                ids,
                0,
            ) from waited
        enough, count, what = _confirmed(waited, durability)
        if not enough:
            raise NotReplicatedError(
                f"{_written(ids)} to the primary, but only {what} within "
                f"{durability.timeout_ms} ms (wanted {durability.replicas}): the write may be "
                "lost if the primary fails now",
                ids,
                count,
            )
        return reply
    raise redis_errors.ConnectionError(f"{command[0]} kept being redirected; nothing was written")


def _written(ids: Sequence[str]) -> str:
    """``written 2 message(s) (1-0, 1-1)``: what a NotReplicatedError reports (ids elided)."""
    shown = ", ".join(ids[:3]) + (f", ... {ids[-1]}" if len(ids) > 3 else "")
    return f"written {len(ids)} message(s) ({shown})"


def _ids(reply: Any) -> list[str]:
    items = reply if isinstance(reply, list) else [reply]
    return [i.decode() if isinstance(i, bytes) else str(i) for i in items]
