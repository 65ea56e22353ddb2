"""The Lua scripts that make every multi-step move atomic: loaded and registered here.

Each script is a file of ``leanmq_async/lua/`` whose header documents its contract (KEYS,
ARGV with units, REPLY, what is ATOMIC, ERRORS); ``prelude.lua`` holds the helpers they
share and is put in front of every script. :class:`Scripts` registers them all on a
client: one field per file, each a redis-py script (its text and SHA, loaded on first
use). :mod:`leanmq_async.replies` parses each script's reply.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.commands.core import AsyncScript

__all__ = ["PRELUDE", "Scripts", "source"]

PRELUDE = "prelude"
"""The file of shared helpers (``lua/prelude.lua``); not a script of its own."""


@functools.cache
def _read(name: str) -> str:
    return (files("leanmq_async") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def source(name: str) -> str:
    """The text Redis runs for script ``name``: the prelude, then ``lua/<name>.lua``."""
    return f"{_read(PRELUDE)}\n{_read(name)}"


@dataclass(frozen=True, slots=True)
class Scripts:
    """Every script, registered on one client. A field per ``lua/<field name>.lua``."""

    send: AsyncScript
    move_due: AsyncScript
    retry: AsyncScript
    dead_letter: AsyncScript
    requeue: AsyncScript
    expire: AsyncScript
    expire_read: AsyncScript
    reclaim: AsyncScript
    extend_leases: AsyncScript
    trim: AsyncScript
    purge: AsyncScript
    create_groups: AsyncScript
    delete_idle_consumer: AsyncScript
    count_after: AsyncScript
    migrate_step: AsyncScript
    store_result: AsyncScript
    store_failure: AsyncScript
    cron_tick: AsyncScript
    cancel: AsyncScript
    claim: AsyncScript
    rate_limit: AsyncScript  # rate limits (issue 16)
    defer: AsyncScript  # rate limits (issue 16)
    due_scan: AsyncScript
    pending_scan: AsyncScript

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The scripts' names (their files' stems)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def register(cls, client: Any) -> Scripts:
        """Register every script on ``client`` (a Redis or RedisCluster client)."""
        return cls(**{name: client.register_script(source(name)) for name in cls.names()})

    def all(self) -> list[AsyncScript]:
        """Every registered script, in field order."""
        return [getattr(self, name) for name in self.names()]
