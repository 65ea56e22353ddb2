"""Logging: the library emits structlog events; the application configures output.

Events go through the standard library logger ``leanmq_async`` (so levels, handlers and
filters are the application's), with stable short event names and key-value context:
``received``, ``handled``, ``retried``, ``dead_lettered``, ``reclaimed``, ``expired``,
``lease_extended``, ``lease_lost``, ``group_created``, ``redis_unavailable``, ``shutdown``…
The library never sets up handlers or structlog configuration: only the CLI does.

Each record is self-describing, whatever the application's logging set-up: its message
renders as ``dead_lettered queue=orders id=… reason=…`` (so Python's last-resort handler,
which prints warnings and errors of an unconfigured app, and ``logging.basicConfig``
show the fields), while ``record.msg == "dead_lettered"`` still holds and the event name
and fields are also record attributes (``record.event``, ``record.queue``…), for
structlog's ``ProcessorFormatter`` with ``ExtraAdder`` and JSON formatters. No
``NullHandler`` is installed on purpose: a dead-lettered message or a lost lease must
not vanish because an application never configured logging.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["EventMessage", "get_logger"]

# Fields every formatter shows anyway (the level) are left out of the message text.
_NOT_IN_TEXT = frozenset({"event", "level", "exception", "stack"})


class EventMessage(str):
    """An event name (it compares equal to it) whose ``str()`` adds the key-values.

    The text is built only when a handler formats the record (never for a record that
    no handler emits).
    """

    __slots__ = ("fields",)
    fields: dict[str, Any]

    def __new__(cls, event: str, fields: dict[str, Any]) -> EventMessage:
        self = super().__new__(cls, event)
        self.fields = fields
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (EventMessage, (str.__str__(self), self.fields))

    def __str__(self) -> str:
        fields = self.fields
        parts = [str.__str__(self)]
        parts.extend(f"{k}={_show(v)}" for k, v in fields.items() if k not in _NOT_IN_TEXT)
        text = " ".join(parts)
        for block in ("exception", "stack"):
            if fields.get(block):
                text += "\n" + str(fields[block])
        return text


def _show(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c == "=" for c in value):
        return value
    return repr(value)


def _render(logger: Any, method: str, event_dict: structlog.typing.EventDict) -> Any:
    kwargs = structlog.stdlib.render_to_log_kwargs(logger, method, event_dict)
    event = str(kwargs["msg"])
    extra: dict[str, Any] = kwargs["extra"]
    kwargs["msg"] = EventMessage(event, extra)
    extra["event"] = event
    return kwargs


def get_logger(name: str = "leanmq_async", **context: Any) -> Any:
    """A structlog logger bound to ``context`` that writes through stdlib ``logging``."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            _render,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    ).bind(**context)
