"""Honest send errors: telling "certainly not written" from "outcome unknown".

A send that fails on the connection raises one of two subclasses of
:class:`~leanmq_async.exceptions.LeanMQConnectionError`:

* :class:`~leanmq_async.exceptions.SendNotWrittenError`: the command never left this
  process (the connection could not be opened or set up, no pooled connection came free
  in time, a cluster could not route it) or Redis refused it without executing it
  (``READONLY``, ``CLUSTERDOWN``, ``TRYAGAIN``, a redirect…). Nothing was written.
* :class:`~leanmq_async.exceptions.SendOutcomeUnknownError`: the command was (maybe
  partly) sent and the connection broke or timed out before the reply. Redis may have
  written the message. A retry with the same ``message_id`` is safe (the send is
  deduplicated); without one a retry may write the message twice.

How it is told apart: redis-py opens (and health-checks) a connection before it writes a
command to it, so an error raised inside those steps, seen in the error's traceback, was
raised before the command left. Anything else is "unknown": when in doubt, unknown. A
borrowed client that retries commands by itself (redis-py's default for a client you
build) may have sent the command in an earlier attempt, so all its connection errors are
"unknown".
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import redis.exceptions as redis_errors

from leanmq_async.connection import _not_executed, translate_errors
from leanmq_async.exceptions import (
    LeanMQConnectionError,
    SendNotWrittenError,
    SendOutcomeUnknownError,
)

__all__ = ["client_retries", "raised_before_send", "translate_send_errors"]

# Functions (of redis-py, and of this library's pools) that run before a command is
# written to a connection: taking a pooled connection, opening it, its handshake and
# health check, loading a pipeline's scripts, reading a cluster's layout.
_BEFORE_SEND = frozenset(
    {
        "get_connection",
        "_wait_for_connection",
        "ensure_connection",
        "acquire",
        "acquire_connection",
        "connect",
        "connect_check_health",
        "_connect",
        "on_connect",
        "on_connect_check_health",
        "check_health",
        "load_scripts",
        "initialize",
    }
)
_MODULES = ("redis.", "leanmq_async.connection", "leanmq_async.cluster")


def client_retries(client: Any) -> int:
    """How many times ``client`` retries a failed command by itself (0 for LeanMQ's own)."""
    retry = getattr(client, "retry", None)
    if retry is None and callable(getattr(client, "get_retry", None)):
        retry = client.get_retry()
    get_retries = getattr(retry, "get_retries", None)
    return int(get_retries()) if callable(get_retries) else 0


def raised_before_send(exc: BaseException) -> bool:
    """Was this redis-py connection error raised before its command was written?"""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        module = str(frame.f_globals.get("__name__", ""))
        if frame.f_code.co_name in _BEFORE_SEND and module.startswith(_MODULES):
            return True
        tb = tb.tb_next
    return False


class translate_send_errors:  # used like a function: `with translate_send_errors("send"):`
    """:class:`translate_errors` for writes of messages: connection errors become
    :class:`SendNotWrittenError` or :class:`SendOutcomeUnknownError`.

    ``retries``: the client retries commands by itself (see :func:`client_retries`).
    """

    __slots__ = ("retries", "what")

    def __init__(self, what: str, *, retries: int = 0) -> None:
        self.what = what
        self.retries = retries

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return None
        try:
            translate_errors(self.what).__exit__(exc_type, exc, tb)
        except LeanMQConnectionError as translated:
            if self._not_written(exc):
                raise SendNotWrittenError(
                    f"{translated}; nothing was written, sending again is safe"
                ) from exc
            raise SendOutcomeUnknownError(
                f"{self.what} failed: outcome unknown, the connection broke after the "
                f"command was sent ({exc}); the message may have been written. Retrying "
                "with the same message_id is safe (it is deduplicated); without a "
                "message_id a retry may write it twice"
            ) from exc
        return None

    def _not_written(self, exc: BaseException) -> bool:
        if isinstance(exc, redis_errors.RedisClusterException):
            return True  # raised by the cluster client while routing: nothing was sent
        if not isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
            # An error reply: only refusals that executed nothing reach here.
            return isinstance(exc, redis_errors.RedisError) and _not_executed(exc)
        return not self.retries and raised_before_send(exc)
