"""Records what ``@queue.handler`` registers: the handler function and its options.

The queue (which registers) and the worker (which runs what was registered) both import
this module; it imports neither at run time, and nothing of the worker runtime.

Decorating checks everything it can without I/O: the function must be a coroutine
function taking one argument; its annotation picks what it receives (the payload, a
validated msgspec type, or the whole :class:`~leanmq_async.Message`), and the payload
decoder for that type is built here, once.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from leanmq_async.backoff import Backoff, exponential_backoff
from leanmq_async.envelope import payload_decoder
from leanmq_async.exceptions import ConfigurationError
from leanmq_async.message import Message
from leanmq_async.rate_limit import RateLimit

if TYPE_CHECKING:
    from leanmq_async.queue import Queue

__all__ = ["Handler", "HandlerFunc", "HandlerKwargs", "HandlerOptions", "register_handler"]

HandlerFunc = Callable[[Any], Awaitable[Any]]
ExpiredPolicy = Literal["drop", "dlq"]


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """How one handler runs.

    concurrency: messages handled at once by this handler in one worker process.
    max_retries: retries after the first attempt before the message is dead-lettered
        (None: the client's ``max_retries``, 3 by default).
    backoff: seconds to wait before retry ``n`` (1-based); default 1, 2, 4 … capped at
        60 s, with jitter.
    timeout: seconds a handler may run before it is cancelled and the attempt fails.
    visibility_timeout: the lease in seconds: a message pending that long with a dead
        consumer is reclaimed by another worker. Live workers extend their leases.
    group: the consumer group (default ``<queue>-group``); several groups on one queue
        each get every message (fan-out).
    max_deliveries: a message delivered this many times without completing (it keeps
        killing workers) is dead-lettered without running the handler.
    expired: what happens to a message past its TTL: ``"drop"`` (acknowledged, counted,
        logged) or ``"dlq"`` (dead-lettered with reason "expired").
    result_ttl: store the handler's return value for this many seconds, for
        ``queue.call()``/``queue.get_result()`` (None: results are not stored).
    rate_limit: a :class:`~leanmq_async.RateLimit` on the handler's starts, across every
        worker process (per key with its ``key=``); a message over it waits.
    """

    concurrency: int = 10
    max_retries: int | None = None
    backoff: Backoff = exponential_backoff
    timeout: float | None = None
    visibility_timeout: float = 30.0
    group: str | None = None
    max_deliveries: int = 5
    expired: ExpiredPolicy = "drop"
    result_ttl: float | None = None  # results (issue 17): see leanmq_async/results.py
    rate_limit: RateLimit | None = None  # rate limits (issue 16): see rate_limit.py

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ConfigurationError:
            return ConfigurationError(
                f"handler option {name}={getattr(self, name)!r} is invalid: {want}"
            )

        if not _is_int(self.concurrency) or self.concurrency < 1:
            raise bad("concurrency", "use an integer >= 1")
        if self.max_retries is not None and (not _is_int(self.max_retries) or self.max_retries < 0):
            raise bad("max_retries", "use an integer >= 0")
        if not callable(self.backoff):
            raise bad("backoff", "use a function of the attempt number returning seconds")
        if self.timeout is not None and not _positive(self.timeout):
            raise bad("timeout", "use a number of seconds > 0, or None")
        if not _positive(self.visibility_timeout) or self.visibility_timeout < 0.05:
            raise bad("visibility_timeout", "use a number of seconds >= 0.05")
        if not _is_int(self.max_deliveries) or self.max_deliveries < 1:
            raise bad("max_deliveries", "use an integer >= 1")
        if self.expired not in ("drop", "dlq"):
            raise bad("expired", "use 'drop' or 'dlq'")
        if self.group is not None and (not isinstance(self.group, str) or not self.group):
            raise bad("group", "use a non-empty string")
        if self.result_ttl is not None and not _positive(self.result_ttl):
            raise bad("result_ttl", "use a number of seconds > 0, or None")
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise bad("rate_limit", "use RateLimit(limit, per=seconds[, key=function]), or None")


class HandlerKwargs(TypedDict, total=False):
    """The keywords of ``@queue.handler(...)``, typed (see :class:`HandlerOptions`)."""

    concurrency: int
    max_retries: int | None
    backoff: Backoff
    timeout: float | None
    visibility_timeout: float
    group: str | None
    max_deliveries: int
    expired: ExpiredPolicy
    result_ttl: float | None
    rate_limit: RateLimit | None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


_OPTION_NAMES = frozenset(f.name for f in fields(HandlerOptions))


@dataclass(eq=False, slots=True)
class Handler:
    """A registered handler: the queue, the function, and how to call it."""

    queue: Queue
    func: HandlerFunc
    options: HandlerOptions
    group: str
    payload_type: Any
    wants_message: bool
    name: str = field(default="")

    def __repr__(self) -> str:
        return f"<Handler {self.name} queue={self.queue.name!r} group={self.group!r}>"

    @property
    def max_retries(self) -> int:
        configured = self.options.max_retries
        return self.queue.mq.max_retries if configured is None else configured


def _argument_kind(func: HandlerFunc) -> tuple[Any, bool]:
    """``(payload type, wants_message)`` from the handler's one parameter."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot inspect handler {func!r}: {exc}") from exc
    required = [
        p
        for p in sig.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) != 1:
        raise ConfigurationError(
            f"handler {func.__qualname__} must take exactly one required argument (the payload, "
            f"a msgspec Struct, or a Message), it takes {len(required)}"
        )
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise ConfigurationError(
            f"cannot resolve the annotations of handler {func.__qualname__}: {exc}"
        ) from exc
    annotation = hints.get(required[0].name, Any)
    if annotation is Message:
        return Any, True
    if typing.get_origin(annotation) is Message:
        (inner,) = typing.get_args(annotation)
        return inner, True
    return annotation, False


def register_handler(queue: Queue, func: HandlerFunc, options: Mapping[str, Any]) -> Handler:
    """Validate ``func`` and ``options`` and register the handler on the queue's client."""
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise ConfigurationError(
            f"unknown handler option(s) {sorted(unknown)}; valid: {sorted(_OPTION_NAMES)}"
        )
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(
            f"handler {getattr(func, '__qualname__', func)!r} must be an `async def` function"
        )
    opts = HandlerOptions(**options)
    payload_type, wants_message = _argument_kind(func)
    if queue.payload_type is not Any:
        if payload_type is Any:
            payload_type = queue.payload_type
        elif payload_type != queue.payload_type:
            raise ConfigurationError(
                f"handler {func.__qualname__} takes {payload_type!r}, but queue {queue.name!r} "
                f"carries {queue.payload_type!r}: annotate it with that type, "
                "Message[that type], or nothing"
            )
    try:
        payload_decoder(payload_type)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"handler {func.__qualname__}: payload type {payload_type!r} is not decodable "
            f"(use JSON types, msgspec Structs, dataclasses, TypedDicts or pydantic "
            f"models): {exc}"
        ) from exc
    group = opts.group or queue.consumer_group
    mq = queue.mq
    for existing in mq.handlers:
        if existing.queue == queue and existing.group == group:
            raise ConfigurationError(
                f"queue {queue.name!r} already has a handler for group {group!r} "
                f"({existing.name}); use another group= for fan-out"
            )
    handler = Handler(
        queue=queue,
        func=func,
        options=opts,
        group=group,
        payload_type=payload_type,
        wants_message=wants_message,
        name=f"{func.__module__}.{func.__qualname__}",
    )
    mq.handlers.append(handler)
    return handler
