"""The objects a reader gets back: messages, dead-letter details and queue information.

:class:`Message`, :class:`DeadLetterInfo`, :class:`QueueInfo`, :class:`DeadLetterResult`,
:class:`CancelOutcome`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

__all__ = ["CancelOutcome", "DeadLetterInfo", "DeadLetterResult", "Message", "QueueInfo"]

T = TypeVar("T")


class CancelOutcome(enum.StrEnum):
    """What ``Queue.cancel`` did (see README "Cancellation").

    ``CANCELLED``: no worker had started it; it never runs (dead-lettered, reason
    ``"cancelled"``). ``RUNNING``: a handler has it; the cancel was requested and the
    worker cancels the handler within moments (dead-lettered, reason ``"cancelled"``;
    unless the handler finishes first: then it is handled). ``FINISHED``: every group
    already handled it. ``NOT_FOUND``: no such message (never sent, gone, or a delayed
    message already moved into the stream under its stream id).
    """

    CANCELLED = "cancelled"
    RUNNING = "running"
    FINISHED = "finished"
    NOT_FOUND = "not_found"


class DeadLetterInfo(msgspec.Struct, kw_only=True):
    """Why and when a message was dead-lettered (present on messages read from a DLQ)."""

    reason: str
    error_type: str = ""
    traceback: str = ""
    attempts: int = 0
    failed_at: float = 0.0
    source_queue: str = ""
    source_id: str = ""
    group: str = ""


class DeadLetterResult(msgspec.Struct, kw_only=True):
    """What ``Queue.move_to_dlq`` did with each id.

    ``moved``: the ids moved to the DLQ, in the order given. ``not_moved``: id -> why it
    was not: ``"not_pending"`` (in the stream but not pending in the queue's group: never
    delivered, or already acknowledged; it stays where it is) or ``"not_found"`` (not in
    the stream and not pending). ``len(result)`` and ``result.count`` are the number moved.
    """

    moved: list[str] = msgspec.field(default_factory=list)
    not_moved: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def count(self) -> int:
        """The number of ids moved."""
        return len(self.moved)

    def __len__(self) -> int:
        return len(self.moved)


class Message(msgspec.Struct, Generic[T], kw_only=True):
    """One message read from a queue.

    ``id`` is the Redis stream id (the handle for acknowledge/delete/move); ``message_id``
    is the producer's id (a uuid unless the caller chose one). ``attempt`` counts handler
    attempts across retries (1 on first delivery); ``delivery_count`` is how often Redis
    delivered this stream entry (above 1 only after a consumer died holding it).
    """

    id: str
    data: T
    timestamp: float
    delivery_count: int = 1
    message_id: str = ""
    attempt: int = 1
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    queue: str = ""
    expires_at: float | None = None
    dead_letter: DeadLetterInfo | None = None


@dataclass(slots=True)
class QueueInfo:
    """What ``list_queues`` and ``get_info`` report about one stream (LeanMQ's fields)."""

    name: str
    is_dlq: bool = False
    message_count: int = 0
    consumer_group: str | None = None
    pending_messages: int = 0
    created_at: float | None = None
    delayed_messages: int = 0
    consumer_groups: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"QueueInfo(name={self.name!r}, is_dlq={self.is_dlq}, "
            f"message_count={self.message_count}, pending_messages={self.pending_messages}, "
            f"delayed_messages={self.delayed_messages})"
        )


def payload_repr(data: Any) -> str:
    """A short representation of a payload for logs and reprs."""
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."
