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

from leanmq_async.cluster.clients import (
    LeanMQRedisCluster,
    build_cluster_client,
    build_redis_client,
    build_sentinel_client,
)
from leanmq_async.cluster.durability import (
    Durability,
    NotReplicatedError,
    check_wait_support,
    replication_error,
    wait_command,
    write_and_wait,
)
from leanmq_async.cluster.slots import check_one_slot, queue_slot
from leanmq_async.cluster.types import CLUSTER_SCHEMES, SENTINEL_SCHEMES, AnyRedis, is_cluster
from leanmq_async.cluster.urls import ClusterAddress as ClusterAddress
from leanmq_async.cluster.urls import SentinelAddress as SentinelAddress
from leanmq_async.cluster.urls import parse_cluster_url, parse_sentinel_url, sentinel_url

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
    "replication_error",
    "sentinel_url",
    "wait_command",
    "write_and_wait",
]
