"""The client: :class:`LeanMQ`, the entry point of the library."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from leanmq_async._log import get_logger
from leanmq_async.client_connect import choose_client, redact_url
from leanmq_async.client_ops import expire_everywhere, list_every_queue, redis_health
from leanmq_async.cluster import Durability, build_redis_client
from leanmq_async.connection import ConnectionSettings
from leanmq_async.envelope import DEFAULT_MAX_MESSAGE_SIZE, Serializer, get_codec, payload_decoder
from leanmq_async.exceptions import (
    ConfigurationError,
    DeadLetterQueueNotFoundError,
    QueueNotFoundError,
)
from leanmq_async.idempotency import DEFAULT_DEDUP_WINDOW, dedup_window_ms
from leanmq_async.keys import (
    DLQ_SUFFIX,
    QueueKeys,
    make_consumer_name,
    validate_prefix,
    validate_queue_name,
)
from leanmq_async.legacy import legacy_hint
from leanmq_async.message import QueueInfo
from leanmq_async.partition import PartitionedQueue
from leanmq_async.queue import Queue
from leanmq_async.store import Store
from leanmq_async.transaction import Transaction

if TYPE_CHECKING:
    from typing import Unpack

    from leanmq_async.cron import CronJob, CronKwargs, JobFunc
    from leanmq_async.registration import Handler
    from leanmq_async.result_hub import ResultHub
    from leanmq_async.worker.supervisor import Worker

__all__ = ["HeaderProvider", "LeanMQ"]

P = TypeVar("P")
DEFAULT_PREFIX = "mq:"

HeaderProvider = Callable[["Queue"], Mapping[str, str] | None]
"""Called on every send with the target queue: headers to add (a send's own win)."""


class LeanMQ:
    """An async client for queues on Redis Streams.

    Connect by URL (``redis://``, ``rediss://`` for TLS, ``unix://``; user and password in
    the URL for ACL), by LeanMQ's keywords (``redis_host``, ``redis_port``, ``redis_db``,
    ``redis_password``), or pass your own ``redis.asyncio.Redis`` (or ``RedisCluster``)
    as ``client`` (it is borrowed: never closed by LeanMQ). Redis Cluster:
    ``redis+cluster://host:port[,host:port...]`` or ``cluster=True``; Sentinel:
    ``redis+sentinel://host:port[,host:port...]/service_name[/db]`` or ``sentinels=[(host,
    port)], service_name=...``; ``durability=Durability(replicas=1)`` waits for replicas
    after each send. See :mod:`leanmq_async.cluster`. With neither ``url`` nor a keyword, the
    ``LEANMQ_URL`` environment variable is used (``leanmq-worker --url`` sets it), then
    ``redis://localhost:6379/0``. ``prefix`` (of every key) defaults to ``$LEANMQ_PREFIX``,
    then ``mq:``; the ``leanmq`` admin CLI reads the same two variables. No I/O happens until
    the first call.

    ``header_providers``: callables consulted on every send (``send_message``,
    ``send_messages``, transactions) with the target queue, each returning headers to add
    to the message (headers given to the send win). Tracing uses one to propagate the
    trace context: see :mod:`leanmq_async.ops.tracing`. Without any, sending pays nothing.

    ``observers``: worker observers (metrics, tracing; see :mod:`leanmq_async.worker.observer`)
    every worker of this client gets, ``leanmq-worker`` included; :meth:`add_observer` adds
    one later. An observer with an ``inject_headers`` method (``OpenTelemetryTracing``)
    becomes a header provider too, so sends carry the trace context.

    ``dedup_window``: seconds a send's explicit ``message_id`` is remembered per queue; a
    send of the same id within it writes nothing and returns the first send's id (0: no
    deduplication). See :mod:`leanmq_async.idempotency`.

    ``coalesce_sends``: concurrent sends share round trips (one pipeline for the sends
    made while one is in flight; see :mod:`leanmq_async.send_coalescer`); False: each
    send on its own connection, as before.

    Use as ``async with LeanMQ(...) as mq:``, or call :meth:`aclose` when done.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str | None = None,
        redis_host: str | None = None,
        redis_port: int | None = None,
        redis_db: int | None = None,
        redis_password: str | None = None,
        redis_username: str | None = None,
        ssl: bool = False,
        client: aioredis.Redis | AsyncRedisCluster | None = None,
        serializer: Serializer = "json",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_retries: int = 3,
        consumer_name: str | None = None,
        connection: ConnectionSettings | None = None,
        cluster: bool = False,
        sentinels: Sequence[tuple[str, int]] | None = None,
        service_name: str | None = None,
        durability: Durability | None = None,
        header_providers: Iterable[HeaderProvider] | None = None,
        observers: Iterable[Any] | None = None,
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        coalesce_sends: bool = True,
    ) -> None:
        self.prefix = validate_prefix(
            os.environ.get("LEANMQ_PREFIX", DEFAULT_PREFIX) if prefix is None else prefix
        )
        self.header_providers: list[HeaderProvider] = list(header_providers or ())
        self.observers: list[Any] = []
        for observer in observers or ():
            self.add_observer(observer)
        self.codec = get_codec(serializer, max_message_size)
        dedup_window_ms(dedup_window)  # issue 17: refuse a bad window at once
        self.dedup_window = dedup_window
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.consumer_name = consumer_name or make_consumer_name()
        self.connection_settings = connection or ConnectionSettings()
        self.redis, self.url, self._owns_client = choose_client(
            url,
            client,
            self.connection_settings,
            redis_host=redis_host,
            redis_port=redis_port,
            redis_db=redis_db,
            redis_password=redis_password,
            redis_username=redis_username,
            ssl=ssl,
            cluster=cluster,
            sentinels=sentinels,
            service_name=service_name,
        )
        if durability is not None:
            durability.check(self.connection_settings)
        self.store = Store(self.redis)
        self.store.durability = durability
        if not coalesce_sends:
            self.store.coalescer = None
        self.log = get_logger("leanmq_async", prefix=self.prefix)
        self._legacy_logged = False  # LeanMQ 0.2 queues looked for (issue 15): once
        self.handlers: list[Handler] = []
        self.cron_jobs: dict[str, CronJob] = {}  # periodic jobs (issue 16): see cron.py
        self._queues: dict[tuple[str, bool], Queue] = {}
        self._partitioned: dict[str, PartitionedQueue] = {}
        self._closed = False
        self._results: ResultHub | None = None  # results (issue 17): see results.py

    def __repr__(self) -> str:
        return (
            f"<LeanMQ url={redact_url(self.url)!r} prefix={self.prefix!r} "
            f"consumer={self.consumer_name!r} handlers={len(self.handlers)}>"
        )

    async def __aenter__(self) -> LeanMQ:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the Redis connections if LeanMQ owns them (a borrowed client stays open)."""
        if self._closed:
            return
        self._closed = True
        await self._close_results()
        if self._owns_client:
            await self.redis.aclose()

    async def rebind(self, url: str) -> None:
        """Point this client at the Redis at ``url`` from now on (tests; see ``testing``).

        For an app whose client was built at import: its queues and handlers stay, its own
        connections are closed, and a closed client becomes usable again. Not while a
        worker runs on it; a borrowed client cannot be rebound.
        """
        if not self._owns_client:
            raise ConfigurationError(
                "this LeanMQ uses a borrowed client: pass another client to a new LeanMQ"
            )
        client = build_redis_client(url, self.connection_settings)
        old, durability = self.redis, self.store.durability
        coalesce = self.store.coalescer is not None
        self.url, self.redis = url, client
        self.store = Store(client)
        self.store.durability = durability
        if not coalesce:
            self.store.coalescer = None
        self._closed = False
        await self._close_results()
        await old.aclose()

    async def _close_results(self) -> None:
        """Close the shared result subscription (results, issue 17)."""
        hub, self._results = self._results, None
        if hub is not None:
            await hub.aclose()

    def add_observer(self, observer: Any) -> None:
        """Give every worker of this client ``observer`` (a :class:`WorkerObserver`).

        Workers already running keep the observers they started with. An observer with
        an ``inject_headers(queue)`` method is added to :attr:`header_providers` too.
        """
        if isinstance(observer, str | bytes | type) or observer is None:
            raise ConfigurationError(
                f"observers are instances (PrometheusMetrics(), OpenTelemetryTracing()), "
                f"got {observer!r}"
            )
        if any(o is observer for o in self.observers):
            return
        self.observers.append(observer)
        inject = getattr(observer, "inject_headers", None)
        if callable(inject):
            self.header_providers.append(inject)

    # -- queues --------------------------------------------------------------------------

    def _queue_object(self, base: str, is_dlq: bool) -> Queue:
        queue = self._queues.get((base, is_dlq))
        if queue is None:
            queue = self._queues[(base, is_dlq)] = Queue(self, base, is_dlq=is_dlq)
        return queue

    @staticmethod
    def _split(name: str) -> tuple[str, bool]:
        validate_queue_name(name)
        if name.endswith(DLQ_SUFFIX):
            return name[: -len(DLQ_SUFFIX)], True
        return name, False

    @overload
    def queue(self, name: str, partitions: None = None) -> Queue[Any]: ...

    @overload
    def queue(self, name: str, partitions: None = None, *, payload_type: type[P]) -> Queue[P]: ...

    @overload
    def queue(self, name: str, partitions: int) -> PartitionedQueue: ...

    def queue(
        self, name: str, partitions: int | None = None, *, payload_type: Any = None
    ) -> Queue[Any] | PartitionedQueue:
        """Declare a main queue without I/O (for ``@mq.queue("orders").handler`` at import).

        The worker creates its stream and group when it starts; sending needs no setup.
        ``payload_type=Order`` makes it a ``Queue[Order]``: reads decode and validate
        ``Order`` (a msgspec Struct, dataclass, TypedDict, pydantic model …) and handlers
        must take ``Order`` or ``Message[Order]`` (checked when decorated). Declare the
        type once, before the queue is used untyped (asking again with another type raises).
        ``partitions=N`` declares a :class:`~leanmq_async.partition.PartitionedQueue`
        stored as the queues ``<name>#0`` … ``<name>#<N-1>`` (cached: asking again with
        another N raises :class:`ConfigurationError`).
        """
        if payload_type is not None:
            if partitions is not None:
                raise ConfigurationError("payload_type is not supported with partitions= yet")
            return self._typed_queue(name, payload_type)
        base, is_dlq = self._split(name)
        if is_dlq:
            raise ConfigurationError(
                f"{name!r} names a dead-letter queue; declare the main queue {base!r} and use "
                ".dead_letter_queue()"
            )
        declared = self._partitioned.get(base)
        if partitions is None:
            if declared is not None:
                raise ConfigurationError(
                    f"{base!r} is declared with partitions={len(declared)}; use "
                    f"mq.queue({base!r}, partitions={len(declared)})"
                )
            return self._queue_object(base, False)
        if declared is None:
            declared = self._partitioned[base] = PartitionedQueue(self, base, partitions)
        elif len(declared) != partitions:
            raise ConfigurationError(
                f"{base!r} is already declared with partitions={len(declared)}, not "
                f"{partitions!r}: the key -> partition mapping depends on it"
            )
        return declared

    def _typed_queue(self, name: str, payload_type: Any) -> Queue[Any]:
        try:
            payload_decoder(payload_type)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"payload_type {payload_type!r} of queue {name!r} is not decodable: {exc}"
            ) from exc
        queue = self.queue(name)
        if queue.payload_type != payload_type:
            if queue.payload_type is not Any or any(h.queue == queue for h in self.handlers):
                raise ConfigurationError(
                    f"queue {name!r} is already declared with payload_type="
                    f"{queue.payload_type!r}; declare it once, with one type"
                )
            queue.payload_type = payload_type
        return queue

    async def create_queue_pair(self, queue_name: str) -> tuple[Queue, Queue]:
        """Create a queue and its dead-letter queue (idempotent); return ``(queue, dlq)``."""
        queue = self.queue(queue_name)
        dlq = queue.dead_letter_queue()
        await self.store.create_queue(
            self.prefix, queue.keys, queue.consumer_group, dlq.consumer_group
        )
        return queue, dlq

    async def get_queue(self, queue_name: str) -> Queue:
        """The created queue (or DLQ, for ``"name:dlq"``); raise if it was never created."""
        base, is_dlq = self._split(queue_name)
        keys = QueueKeys(self.prefix, base)
        if not await self.store.queue_exists(keys, keys.dlq if is_dlq else keys.stream):
            raise QueueNotFoundError(
                f"queue {queue_name!r} does not exist under prefix {self.prefix!r}; "
                f"create it with await mq.create_queue_pair({base!r})"
                + await legacy_hint(self, base)
            )
        return self._queue_object(base, is_dlq)

    async def get_dead_letter_queue(self, queue_name: str) -> Queue:
        """The dead-letter queue of ``queue_name``; raise if the pair was never created."""
        base, _ = self._split(queue_name)
        keys = QueueKeys(self.prefix, base)
        if not await self.store.queue_exists(keys, keys.dlq):
            raise DeadLetterQueueNotFoundError(
                f"queue {base!r} has no dead-letter queue under prefix {self.prefix!r}; "
                f"create the pair with await mq.create_queue_pair({base!r})"
                + await legacy_hint(self, base)
            )
        return self._queue_object(base, True)

    async def list_queues(self) -> list[QueueInfo]:
        """Info on every created queue and its DLQ (two round trips in all).

        A main queue deleted with ``delete_queue(name, delete_dlq=False)`` is left out;
        its dead-letter queue is still listed. LeanMQ 0.2 queues under the prefix are not
        listed (their layout differs): the first call that finds some logs the warning
        ``legacy_queues_found`` with their counts and how to migrate them.
        """
        return await list_every_queue(self)

    async def delete_queue(self, queue_name: str, delete_dlq: bool = True) -> bool:
        """Delete a queue (and by default its DLQ); True if anything was deleted."""
        base, is_dlq = self._split(queue_name)
        if is_dlq:
            raise ConfigurationError(
                f"pass the main queue's name ({base!r}) to delete_queue; use delete_dlq to "
                "choose whether its dead-letter queue goes too"
            )
        return (
            await self.store.delete_queue(self.prefix, QueueKeys(self.prefix, base), delete_dlq) > 0
        )

    # -- transactions and maintenance --------------------------------------------------

    @asynccontextmanager
    async def transaction(
        self, *, durability: Durability | None = None
    ) -> AsyncIterator[Transaction]:
        """Send several messages atomically: all are written at the end of the block, or none.

        ``durability`` (default: the client's) waits for replicas after the commit; see
        :mod:`leanmq_async.cluster`. On Redis Cluster every queue of one transaction must
        be in one hash slot (in practice: one queue).
        """
        if durability is not None:
            durability.check(self.connection_settings)
        tx = Transaction(self.store, durability=durability)
        yield tx
        await tx.commit()

    async def process_expired_messages(self, policy: str = "drop", limit: int = 1000) -> int:
        """Remove expired messages of every queue; return how many entries were removed.

        ``policy="drop"`` deletes them (LeanMQ's behaviour); ``"dlq"`` dead-letters them,
        once per consumer group that was never delivered one. A message pending in a
        group (delivered, not yet settled) is left to that group's consumer and checked
        again later. Works in batches of ``limit`` until a batch comes back short.
        """
        return await expire_everywhere(self, policy, limit)

    async def health(self) -> dict[str, Any]:
        """``{"status": "ok"|"warning"|"critical", "redis": bool, ...}``: is Redis reachable,
        and does it have memory left?

        Under memory pressure (above 90 % of ``maxmemory``) the report is ``warning``
        (``critical`` once full with ``noeviction``: writes are refused) with a
        ``"memory"`` entry saying what is wrong and what to do.
        """
        return await redis_health(self.store)

    def cron(
        self, expression: str | None = None, /, **options: Unpack[CronKwargs]
    ) -> Callable[[JobFunc], JobFunc]:
        """A periodic job run by the workers once per tick: ``@mq.cron("*/5 * * * *",
        tz="Europe/Berlin")`` or ``@mq.cron(every=30)`` (see :mod:`leanmq_async.cron`)."""
        from leanmq_async.cron import cron

        return cron(self, expression, options)

    # -- worker --------------------------------------------------------------------------

    def worker(self, **settings: Any) -> Worker:
        """A :class:`~leanmq_async.worker.Worker` for this client's handlers.

        Use ``async with mq.worker():`` to run it in the background of a block (for app
        lifespans), or ``await mq.run_worker()`` to run until cancelled.
        """
        # Imported here so that `import leanmq_async` does not load the worker runtime.
        from leanmq_async.worker.supervisor import Worker

        return Worker(self, **settings)

    async def run_worker(self, *, task_status: Any = None, **settings: Any) -> None:
        """Run a worker for this client's handlers until cancelled (anyio ``task_status`` aware)."""
        from anyio import TASK_STATUS_IGNORED

        await self.worker(**settings).serve(task_status=task_status or TASK_STATUS_IGNORED)
