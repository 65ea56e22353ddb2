"""Every exception leanmq_async raises, and the signals a handler may raise.

Redis errors are translated into these at the one boundary that talks to Redis
(:mod:`leanmq_async.connection`), always chained with ``raise … from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "ConfigurationError",
    "ConfirmationRequiredError",
    "DeadLetterQueueNotFoundError",
    "DeadLetteredError",
    "InvalidMessageIdError",
    "LeanMQConnectionError",
    "LeanMQError",
    "MessageDecodeError",
    "MessageEncodeError",
    "MessageError",
    "MessageTooLargeError",
    "PartialSendError",
    "QueueError",
    "QueueNotFoundError",
    "RedisOperationError",
    "Reject",
    "Retry",
    "SendNotWrittenError",
    "SendOutcomeUnknownError",
    "TransactionError",
    "TransactionNotWrittenError",
    "TransactionOutcomeUnknownError",
    "WrongQueueKindError",
]


class LeanMQError(Exception):
    """Base class of every error raised by leanmq_async."""


class ConfigurationError(LeanMQError, ValueError):
    """An argument or setting is invalid; the message says which and how to fix it."""


class ConfirmationRequiredError(ConfigurationError):
    """A destructive operation was called without ``confirm=True``."""


class LeanMQConnectionError(LeanMQError, ConnectionError):
    """Redis could not be reached, or the connection broke during a command."""


class SendNotWrittenError(LeanMQConnectionError):
    """A send failed before its command left (connection refused, no free pooled
    connection in time…) or was refused unexecuted (``READONLY``…): nothing was written,
    sending again is safe."""


class SendOutcomeUnknownError(LeanMQConnectionError):
    """The connection broke after a send's command was sent: it may have been written.

    Retrying with the same ``message_id`` is safe: a send with an explicit
    ``message_id`` is deduplicated (see ``LeanMQ(dedup_window=...)``). Without a
    ``message_id`` a retry may write the message twice.
    """


class RedisOperationError(LeanMQError):
    """Redis answered a command with an error (wrong key type, script error, ACL denial…)."""


class QueueError(LeanMQError):
    """A queue operation was refused."""


class QueueNotFoundError(QueueError, LookupError):
    """The named queue has not been created (see ``LeanMQ.create_queue_pair``)."""


class DeadLetterQueueNotFoundError(QueueNotFoundError):
    """The named queue has no dead-letter queue."""


class WrongQueueKindError(QueueError):
    """A dead-letter queue was used where a main queue is needed, or the other way round."""


class InvalidMessageIdError(QueueError, ValueError):
    """A message id is not a Redis stream id of the form ``<milliseconds>-<sequence>``."""


class TransactionError(LeanMQError):
    """A transaction could not be committed; nothing of it was written (except for
    :class:`TransactionOutcomeUnknownError`)."""


class TransactionNotWrittenError(TransactionError, SendNotWrittenError):
    """A commit failed on the connection before its command left: nothing was written."""


class TransactionOutcomeUnknownError(TransactionError, SendOutcomeUnknownError):
    """The connection broke after a commit was sent: it was written whole or not at all.

    Committing the same sends again is safe when each has an explicit ``message_id``.
    """


class PartialSendError(LeanMQError):
    """A send over several partitions was written for some partitions only.

    Each partition is written whole or not at all. ``stream_ids`` holds the ids in the
    order of the items sent, None for an item that was not written; ``errors`` maps the
    name of each partition that failed to its error (a
    :class:`SendOutcomeUnknownError` there means that partition's outcome is unknown: its
    items are None, but they may have been written whole). Resend only the items whose
    id is None (with their message ids, a resend of a partition written whole writes
    nothing again).
    """

    def __init__(
        self,
        message: str,
        stream_ids: Sequence[str | None],
        errors: Mapping[str, LeanMQError],
    ) -> None:
        super().__init__(message)
        self.stream_ids: list[str | None] = list(stream_ids)
        self.errors: dict[str, LeanMQError] = dict(errors)

    @property
    def unsent(self) -> list[int]:
        """Positions (in the order of the items sent) of the items not written."""
        return [i for i, sid in enumerate(self.stream_ids) if sid is None]


class MessageError(LeanMQError):
    """A message could not be encoded, decoded or accepted."""


class MessageEncodeError(MessageError, TypeError):
    """The payload cannot be serialised by the queue's codec."""


class MessageTooLargeError(MessageError, ValueError):
    """The encoded message is larger than the configured ``max_message_size``."""


class MessageDecodeError(MessageError, ValueError):
    """A stream entry is not a valid leanmq_async message, or its payload fails validation."""


class DeadLetteredError(LeanMQError):
    """The message awaited with ``call()``/``get_result()`` was dead-lettered: no result.

    ``reason`` and ``error_type`` are those of its dead-letter entry (``"Reject"``,
    ``"ValueError"``, ``"MessageEncodeError"`` for a result that could not be stored …);
    ``attempts`` the handler attempts made; ``message_id`` and ``queue`` say which.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        error_type: str,
        attempts: int = 0,
        message_id: str = "",
        queue: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.error_type = error_type
        self.attempts = attempts
        self.message_id = message_id
        self.queue = queue


class Retry(Exception):  # a control-flow signal, not an error
    """Raise from a handler to ask for another attempt, optionally after ``delay`` seconds.

    The attempt counts against ``max_retries``; when none are left the message is
    dead-lettered like after any other failure.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        if delay is not None and delay < 0:
            raise ConfigurationError(f"Retry(delay=...) must be >= 0 seconds, got {delay!r}")
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Reject(Exception):  # a control-flow signal, not an error
    """Raise from a handler to dead-letter the message at once, without retries."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        super().__init__(reason)
        self.reason = reason
