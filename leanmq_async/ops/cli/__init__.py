"""The ``leanmq`` commands, one module per command group, each with ``add_parser``.

A command module defines its command(s) in ``add_parser(commands)``: each
:meth:`~leanmq_async.ops.cli.common.Commands.add` names the coroutine that runs it. To add
a command, write such a module and list it in :data:`COMMAND_MODULES` (the order is the
order of ``leanmq --help``).
"""

from __future__ import annotations

from leanmq_async.ops.cli import (
    cancel,
    cron,
    dlq,
    health,
    maintain,
    migrate,
    queues,
    serve,
    stats,
    watch,
)

__all__ = ["COMMAND_MODULES"]

COMMAND_MODULES = (queues, stats, cron, health, dlq, maintain, cancel, watch, serve, migrate)
