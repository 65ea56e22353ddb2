"""Worker instrumentation: observers told about every settled message.

Pass observers to a worker (``mq.worker(observers=[metrics, tracing])`` or
``WorkerSettings(observers=(...))``). A worker without observers pays nothing but a
truthiness test per message; with them, every hook is called inline in the worker's
task, so hooks must be quick and must not block (count, record, enqueue: no I/O).

An observer needs only the hooks it cares about: subclass :class:`WorkerObserver` (every
hook a no-op) or write any object with some of these methods. A hook that raises is
logged (``observer_failed``) and never affects the message.

Every hook gets the :class:`~leanmq_async.worker.runner.HandlerRunner` first: its
``queue.name`` and ``group`` label what happened. ``message_id`` is the producer's id
(``Message.message_id``), ``""`` when the entry could not be decoded.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leanmq_async.message import Message
    from leanmq_async.worker.runner import HandlerRunner

__all__ = ["Notifier", "WorkerObserver", "has_handler_context"]


class WorkerObserver:
    """An observer whose every hook does nothing: subclass it and override some."""

    def on_handled(self, runner: HandlerRunner, message_id: str, duration: float) -> None:
        """The handler returned: the message is acknowledged (``duration`` in seconds)."""

    def on_failed(
        self, runner: HandlerRunner, message_id: str, error: BaseException, duration: float
    ) -> None:
        """The handler raised (including ``Retry``/``Reject``, and its timeout)."""

    def on_retried(
        self, runner: HandlerRunner, message_id: str, attempt: int, delay: float
    ) -> None:
        """A failed message was scheduled for retry ``attempt + 1`` in ``delay`` seconds."""

    def on_dead_lettered(
        self, runner: HandlerRunner, message_id: str, reason: str, error_type: str
    ) -> None:
        """The message was moved to the dead-letter queue."""

    def on_expired(self, runner: HandlerRunner, message_id: str) -> None:
        """The message's TTL ran out before it was handled (dropped or dead-lettered)."""

    def on_reclaimed(self, runner: HandlerRunner, count: int) -> None:
        """``count`` messages held too long by dead consumers were claimed by this worker."""

    def handler_context(
        self, runner: HandlerRunner, message: Message[Any]
    ) -> AbstractAsyncContextManager[Any] | None:
        """An async context manager the handler call runs in (a tracing span), or None.

        Only observers that override this method are asked, and only they make the worker
        build a :class:`~leanmq_async.Message` for handlers that take the payload.
        """
        return None


def has_handler_context(observer: Any) -> bool:
    """Does ``observer`` define a ``handler_context`` of its own (not the no-op one)?"""
    method = getattr(type(observer), "handler_context", None)
    return method is not None and method is not WorkerObserver.handler_context


class Notifier:
    """Calls one runner's observers; a hook that raises is logged, never propagated.

    ``observers`` is empty (falsy) without observers: callers test it before building a
    hook's arguments, so the hot path pays one truthiness test.
    """

    __slots__ = ("contexts", "log", "observers", "runner")

    def __init__(self, observers: tuple[Any, ...], runner: HandlerRunner, log: Any) -> None:
        self.observers = observers
        self.contexts = tuple(o for o in observers if has_handler_context(o))
        self.runner = runner
        self.log = log

    def notify(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every observer that has it."""
        for observer in self.observers:
            method = getattr(observer, hook, None)
            if method is None:
                continue
            try:
                method(self.runner, *args)
            except Exception as exc:  # noqa: BLE001 - instrumentation never fails a message
                self.log.error(
                    "observer_failed", hook=hook, observer=type(observer).__name__, error=repr(exc)
                )

    async def enter_contexts(self, stack: AsyncExitStack, message: Message[Any]) -> None:
        """Enter every observer's ``handler_context`` for ``message`` on ``stack``."""
        for observer in self.contexts:
            try:
                context = observer.handler_context(self.runner, message)
                if context is not None:
                    await stack.enter_async_context(context)
            except Exception as exc:  # noqa: BLE001 - instrumentation never fails a message
                self.log.error(
                    "observer_failed",
                    hook="handler_context",
                    observer=type(observer).__name__,
                    error=repr(exc),
                )
