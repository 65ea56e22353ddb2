"""Log output of the commands: every log record and structlog event to stderr, as text or JSON."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    pass


def _add_pid(_: Any, __: str, event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
    event_dict.setdefault("pid", os.getpid())
    return event_dict


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Send every stdlib log record (the library's structlog events included) to stderr.

    The library's events reach ``logging`` with their key-values in the record's
    ``extra``; :class:`structlog.stdlib.ProcessorFormatter` puts them back into the event
    and renders it as one console line or one JSON object per line.
    """
    renderer: structlog.typing.Processor
    tail: list[structlog.typing.Processor] = []
    if fmt == "json":
        tail.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_stderr_is_tty())
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _add_pid,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    # --log-level debug is for leanmq_async's own debug events; other libraries (redis,
    # asyncio) stay at info so their debug chatter does not drown them.
    numeric = logging.getLevelName(level.upper())
    root.setLevel(max(numeric, logging.INFO))
    logging.getLogger("leanmq_async").setLevel(numeric)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
