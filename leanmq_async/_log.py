"""Logging: the library emits structlog events; the application configures output.

Events go through the standard library logger ``leanmq_async`` (so levels, handlers and
filters are the application's), with stable short event names and key-value context:
``received``, ``handled``, ``retried``, ``dead_lettered``, ``reclaimed``, ``expired``,
``lease_extended``, ``lease_lost``, ``group_created``, ``redis_unavailable``, ``shutdown``…
The library never sets up handlers or structlog configuration: only the CLI does.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["get_logger"]


def get_logger(name: str = "leanmq_async", **context: Any) -> Any:
    """A structlog logger bound to ``context`` that writes through stdlib ``logging``."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    ).bind(**context)
