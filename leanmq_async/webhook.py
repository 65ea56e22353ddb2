"""Webhook-style service-to-service calls on top of queues: :class:`LeanMQWebhook`.

The async counterpart of LeanMQ 0.2's ``leanmq.webhook``. A path names a queue::

    webhook = LeanMQWebhook("redis://localhost:6379/0")

    @webhook.get("/order/status/")             # queue "order_status", no I/O here
    async def order_status(data: dict) -> None:
        ...

    await webhook.send("/order/status", {"order_id": 1, "status": "shipped"})

    async with webhook.worker():               # or: await webhook.run_service()
        ...

Differences from LeanMQ 0.2:

* handlers are ``async def`` and run in the worker runtime (``@webhook.get`` is built on
  ``@queue.handler``), so they accept the same options (``concurrency``, ``max_retries``,
  ``backoff``, ``timeout``, ``group`` …) and a failure is retried with backoff before the
  message is dead-lettered with its reason (LeanMQ 0.2 dead-lettered on the first error);
* the webhook metadata travels as a message header (``webhook-path``) instead of a
  ``_leanmq`` key added to the payload, so the handler gets exactly the data sent;
  annotate the handler's argument with :class:`~leanmq_async.Message` to see the headers;
* no thread and no signal handlers: run the service with ``async with webhook.worker():``
  in an application's lifespan, or ``await webhook.run_service()`` until cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from leanmq_async.client import LeanMQ
from leanmq_async.exceptions import ConfigurationError
from leanmq_async.registration import HandlerFunc, HandlerOptions

if TYPE_CHECKING:
    from leanmq_async.queue import Queue
    from leanmq_async.worker.supervisor import Worker

__all__ = [
    "PATH_HEADER",
    "LeanMQWebhook",
    "WebhookRoute",
    "normalize_path",
    "path_to_queue_name",
]

F = TypeVar("F", bound="HandlerFunc")

PATH_HEADER = "webhook-path"
"""The message header carrying the (normalised) webhook path a message was sent to."""

DEFAULT_PREFIX = "webhook:"


def normalize_path(path: str) -> str:
    """``"order/status/"`` -> ``"/order/status"``: one leading slash, no trailing slash."""
    if not isinstance(path, str):
        raise ConfigurationError(f"a webhook path must be a string, got {path!r}")
    path = path.rstrip("/")
    if not path.startswith("/"):
        path = f"/{path}"
    return path


def path_to_queue_name(path: str) -> str:
    """The queue a path maps to (``"/order/status"`` -> ``"order_status"``), as LeanMQ 0.2.

    Slashes between segments and every character that is not an ASCII letter or digit
    become ``_``. Raises :class:`ConfigurationError` for a path naming no queue (``"/"``).
    """
    name = normalize_path(path).strip("/").replace("/", "_")
    name = "".join(c if c.isascii() and c.isalnum() else "_" for c in name)
    if not name:
        raise ConfigurationError(
            f"webhook path {path!r} names no queue: use a path with at least one segment, "
            "like '/events'"
        )
    return name


@dataclass(frozen=True, slots=True)
class WebhookRoute:
    """A registered webhook handler: its path, queue and function."""

    path: str
    queue: Queue
    handler: HandlerFunc
    options: Mapping[str, Any]


class LeanMQWebhook:
    """Webhook-like calls between services, with queues' retries and dead letters.

    Either wraps a :class:`~leanmq_async.LeanMQ` you pass as ``mq`` (borrowed: never
    closed here; its prefix is used) or builds its own from ``url`` or LeanMQ's keywords
    ``redis_host``/``redis_port``/``redis_db``/``redis_password`` with ``prefix``
    (``"webhook:"`` by default). Extra keyword arguments are handler options applied to
    every route (``LeanMQWebhook(url, max_retries=5, timeout=30)``); a route's own options
    override them. Nothing here does I/O until ``send`` or a worker starts.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        mq: LeanMQ | None = None,
        prefix: str | None = None,
        redis_host: str | None = None,
        redis_port: int | None = None,
        redis_db: int | None = None,
        redis_password: str | None = None,
        **handler_defaults: Any,
    ) -> None:
        keywords: dict[str, Any] = {
            "redis_host": redis_host,
            "redis_port": redis_port,
            "redis_db": redis_db,
            "redis_password": redis_password,
        }
        keywords = {k: v for k, v in keywords.items() if v is not None}
        _check_options(handler_defaults, "LeanMQWebhook()")
        self.handler_defaults: dict[str, Any] = dict(handler_defaults)
        if mq is not None:
            given = (["url"] if url is not None else []) + sorted(keywords)
            if given:
                raise ConfigurationError(
                    f"pass either mq or connection settings ({', '.join(given)}), not both"
                )
            if prefix is not None and prefix != mq.prefix:
                raise ConfigurationError(
                    f"prefix {prefix!r} differs from the prefix {mq.prefix!r} of the LeanMQ "
                    "passed as mq; leave prefix out"
                )
            self.mq = mq
            self._owns_mq = False
        else:
            if url is not None and keywords:
                raise ConfigurationError(
                    f"pass either url or {', '.join(sorted(keywords))}, not both"
                )
            self.mq = LeanMQ(url, prefix=DEFAULT_PREFIX if prefix is None else prefix, **keywords)
            self._owns_mq = True
        self.routes: list[WebhookRoute] = []
        self._paths: dict[str, str] = {}  # queue name -> the path registered for it

    def __repr__(self) -> str:
        return f"<LeanMQWebhook routes={[r.path for r in self.routes]} mq={self.mq!r}>"

    # -- paths ---------------------------------------------------------------------------

    @staticmethod
    def _normalize_path(path: str) -> str:
        return normalize_path(path)

    @staticmethod
    def _path_to_queue_name(path: str) -> str:
        return path_to_queue_name(path)

    def _resolve(self, path: str) -> tuple[str, str]:
        normalized = normalize_path(path)
        name = path_to_queue_name(normalized)
        registered = self._paths.get(name)
        if registered is not None and registered != normalized:
            raise ConfigurationError(
                f"webhook paths {registered!r} and {normalized!r} map to the same queue "
                f"{name!r}; rename one of them"
            )
        return normalized, name

    def queue(self, path: str) -> Queue:
        """The queue behind ``path`` (no I/O); ``.dead_letter_queue()`` gives its DLQ."""
        return self.mq.queue(self._resolve(path)[1])

    # -- handlers ------------------------------------------------------------------------

    def get(self, path: str, **options: Any) -> Callable[[F], F]:
        """Register an ``async def`` handler for ``path`` (no I/O).

        ``options`` are handler options (see :class:`~leanmq_async.worker.HandlerOptions`),
        merged over the defaults given to the constructor. The handler receives the data
        sent (validated if annotated with a msgspec Struct), or the whole
        :class:`~leanmq_async.Message` (headers included) if annotated with it.
        """
        normalized, name = self._resolve(path)
        _check_options(options, f"@webhook.get({path!r})")
        merged = {**self.handler_defaults, **options}
        queue = self.mq.queue(name)

        def decorator(func: F) -> F:
            queue.handler(**merged)(func)
            self._paths[name] = normalized
            self.routes.append(WebhookRoute(normalized, queue, func, merged))
            return func

        return decorator

    # -- sending -------------------------------------------------------------------------

    async def send(self, path: str, data: Any, **send_kwargs: Any) -> str:
        """Send ``data`` to ``path``; return the stream id (see ``Queue.send_message``).

        The path need not be registered here (the receiving service registers it); the
        message waits in its queue until a worker with a handler for it reads it.
        ``send_kwargs`` go to ``send_message`` (``message_id``, ``ttl``, ``delay``, ``priority``,
        ``headers``); the ``webhook-path`` header is added.
        """
        normalized, name = self._resolve(path)
        headers = {**(send_kwargs.pop("headers", None) or {}), PATH_HEADER: normalized}
        return await self.mq.queue(name).send_message(data, headers=headers, **send_kwargs)

    async def call(
        self,
        path: str,
        data: Any,
        *,
        timeout: float | None = 30.0,  # noqa: ASYNC109 - the result's deadline (API)
        result_type: Any = Any,
        **send_kwargs: Any,
    ) -> Any:
        """Send ``data`` to ``path`` and return what its handler returned (request/response).

        The route's handler must be registered with ``result_ttl=`` (``@webhook.get(path,
        result_ttl=60)``). Raises :class:`~leanmq_async.DeadLetteredError` when the message
        is dead-lettered and ``TimeoutError`` after ``timeout`` seconds (see
        ``Queue.call``); ``send_kwargs`` are those of :meth:`send`.
        """
        normalized, name = self._resolve(path)
        headers = {**(send_kwargs.pop("headers", None) or {}), PATH_HEADER: normalized}
        return await self.mq.queue(name).call(
            data, timeout=timeout, result_type=result_type, headers=headers, **send_kwargs
        )

    # -- running -------------------------------------------------------------------------

    def worker(self, **settings: Any) -> Worker:
        """A worker running this webhook's routes (``async with webhook.worker():``).

        ``settings`` are worker settings (``burst``, ``grace_period`` …, see
        :class:`~leanmq_async.worker.WorkerSettings`). Only the webhook's queues are run,
        also when ``mq`` is shared with other handlers (pass ``queues=`` to choose).
        """
        if not self.routes:
            raise ConfigurationError(
                "no webhook routes: register handlers with @webhook.get(path) before "
                "starting the service"
            )
        settings.setdefault("queues", list(dict.fromkeys(r.queue for r in self.routes)))
        return self.mq.worker(**settings)

    async def run_service(
        self, *, task_status: TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED, **settings: Any
    ) -> None:
        """Run the webhook worker until cancelled (or, with ``burst=True``, until idle).

        Installs no signal handlers. With ``await task_group.start(webhook.run_service)``
        it returns once the worker reads its queues.
        """
        await self.worker(**settings).serve(task_status=task_status)

    # -- closing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the Redis connections if this webhook built its own LeanMQ."""
        if self._owns_mq:
            await self.mq.aclose()

    async def __aenter__(self) -> LeanMQWebhook:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _check_options(options: Mapping[str, Any], where: str) -> None:
    """Reject unknown or invalid handler options early, with the valid names."""
    valid = {f.name for f in fields(HandlerOptions)}
    unknown = set(options) - valid
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown handler option(s) {sorted(unknown)}; valid: {sorted(valid)}"
        )
    HandlerOptions(**options)
