"""Every Redis key leanmq_async uses is named here, and nowhere else.

All keys of one queue share one Redis Cluster hash tag, the queue name in braces::

    {prefix}{orders}                  main stream (XADD / XREADGROUP)
    {prefix}{orders}:dlq              dead-letter stream
    {prefix}{orders}:delayed          ZSET  member -> due time (ms, Redis clock): delays and retries
    {prefix}{orders}:delayed:data     HASH  member -> packed stream fields of the delayed entry
    {prefix}{orders}:expiry           ZSET  stream id -> expiry time (ms, Redis clock)
    {prefix}{orders}:meta             HASH  created_at, consumer_group, dlq_group
    {prefix}{orders}:dedup            HASH  message_id -> "<until ms> <stream id>" (dedup)
    {prefix}{orders}:dedup:until      ZSET  message_id -> end of its dedup window (ms)
    {prefix}{orders}:cancelled        ZSET  stream id -> end of its cancel marker (ms; cancel.lua)
    {prefix}{orders}:result:<message_id>  STRING  a handler's result (expires; see results.py)
    {prefix}{cron.<job>}:cron         HASH  a periodic job's state (queue cron.<job>; see cron.py)
    {prefix}{orders}:p0 / :p2         the stream of priority level 0 (low) / 2 (high), each with
                                      its own :delayed, :delayed:data and :expiry keys
                                      (``{prefix}{orders}:p2:delayed`` ...); level 1, the
                                      default, is the main stream (see :mod:`priority`)
    {prefix}{orders}:rl:<group>       LIST  a handler's rate limit: starts granted (ms; expires)
    {prefix}{orders}:rl:<group>:k:<key>   LIST  the same, per key of a keyed rate limit
    {prefix}{}:registry               SET   names of the queues created with this prefix

and two pub/sub channels per prefix: ``{prefix}results``, announcing stored results, and
``{prefix}cancel``, announcing cancel requests of running messages (see ``queue.cancel``).

so every multi-key step on one queue is a single atomic Lua script, also on a cluster.
The registry is the only key outside a queue's slot; it is only an index for
``list_queues`` and is never part of an atomic step.

No key is shared with LeanMQ 0.2, whose keys under the same prefix are ``{prefix}orders``,
``{prefix}orders:dlq``, ``{prefix}orders:metadata``, ``{prefix}orders:expiry`` and
``{prefix}registry``: every key above starts with ``{prefix}{`` (LeanMQ 0.2 would need
a queue name starting with a brace), and the registry's empty hash tag ``{}`` can never
be a queue's (queue names are non-empty and brace-free).

Transition: earlier versions (0.1.0) wrote the registry to ``{prefix}registry``, the very key
LeanMQ 0.2 uses for its own registry. That key is now only *read* (never written): its
members that are queues of this library (their ``:meta`` hash exists) are listed as
well (:func:`legacy_registry_key`); ``leanmq migrate --all --confirm`` copies them
to the new registry and removes them from the old key. The read goes in a later release.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass

from leanmq_async.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_LEVEL",
    "DLQ_SUFFIX",
    "LEVELS",
    "QueueKeys",
    "cancel_channel",
    "default_group",
    "legacy_registry_key",
    "make_consumer_name",
    "registry_key",
    "results_channel",
    "validate_prefix",
    "validate_queue_name",
]

DLQ_SUFFIX = ":dlq"

LEVELS = (0, 1, 2)
"""The priority levels, lowest first (see :mod:`leanmq_async.priority`)."""
DEFAULT_LEVEL = 1
"""The level of a message sent without ``priority``: the queue's main stream."""

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:\-/#@]+$")


def validate_queue_name(name: str) -> str:
    """Return ``name`` if it can name a queue, else raise :class:`ConfigurationError`."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a queue name must be a non-empty string, got {name!r}")
    if len(name) > 200 or not _QUEUE_NAME.match(name):
        raise ConfigurationError(
            f"invalid queue name {name!r}: use at most 200 letters, digits and the characters "
            "_ . : - / # @ (no spaces or braces)"
        )
    return name


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can prefix keys, else raise :class:`ConfigurationError`."""
    if not isinstance(prefix, str):
        raise ConfigurationError(f"prefix must be a string, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"prefix {prefix!r} must not contain braces: the queue name is the hash tag"
        )
    return prefix


def default_group(base_name: str) -> str:
    """The consumer group LeanMQ uses for a main queue (``orders`` -> ``orders-group``)."""
    return f"{base_name}-group"


def make_consumer_name() -> str:
    """A consumer name unique to this process and call: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue pair (a main queue and its dead-letter queue)."""

    prefix: str
    base: str
    level: int = DEFAULT_LEVEL
    """The priority level whose stream, delayed and expiry keys these are (the others are
    the queue's, whatever the level)."""

    @property
    def tag(self) -> str:
        return f"{self.prefix}{{{self.base}}}"

    @property
    def _level_tag(self) -> str:
        return self.tag if self.level == DEFAULT_LEVEL else f"{self.tag}:p{self.level}"

    def at(self, level: int) -> QueueKeys:
        """The keys of priority level ``level`` of this queue."""
        return self if level == self.level else QueueKeys(self.prefix, self.base, level)

    def levels(self) -> tuple[QueueKeys, ...]:
        """The keys of every level, highest first."""
        return tuple(self.at(level) for level in reversed(LEVELS))

    @property
    def stream(self) -> str:
        return self._level_tag

    @property
    def dlq(self) -> str:
        return f"{self.tag}{DLQ_SUFFIX}"

    @property
    def delayed(self) -> str:
        return f"{self._level_tag}:delayed"

    @property
    def delayed_data(self) -> str:
        return f"{self._level_tag}:delayed:data"

    @property
    def expiry(self) -> str:
        return f"{self._level_tag}:expiry"

    @property
    def dlq_expiry(self) -> str:
        return f"{self.dlq}:expiry"

    def expiry_of(self, stream: str) -> str:
        """The expiry index of ``stream`` (the main stream's or the DLQ's)."""
        return self.expiry if stream == self.stream else self.dlq_expiry

    @property
    def meta(self) -> str:
        return f"{self.tag}:meta"

    @property
    def dedup(self) -> str:
        return f"{self.tag}:dedup"

    @property
    def dedup_until(self) -> str:
        return f"{self.tag}:dedup:until"

    @property
    def cron(self) -> str:
        """The state of the periodic job whose runs go to this queue (see ``cron.py``)."""
        return f"{self.tag}:cron"

    @property
    def cancelled(self) -> str:
        """The cancel markers: entry name (a level's: ``<id>:p<level>``) -> when it ends (ms)."""
        return f"{self.tag}:cancelled"

    def result(self, message_id: str) -> str:
        """Where the result of the message ``message_id`` is stored (see ``results.py``)."""
        return f"{self.tag}:result:{message_id}"

    def rate_limit(self, group: str, key: str | None = None) -> str:
        """The log of starts granted to ``group``'s handler (one per ``key`` when keyed);
        see ``lua/rate_limit.lua``. A partitioned queue's limiter uses the keys of its
        logical name (one limit across its partitions)."""
        log = f"{self.tag}:rl:{group}"
        return log if key is None else f"{log}:k:{key}"

    def all(self) -> tuple[str, ...]:
        """Every key of the pair (every priority level's included), for deletion (rate-limit
        logs expire by themselves)."""
        levels = [k for lv in self.levels() if lv.level != DEFAULT_LEVEL for k in lv.level_keys()]
        main = self.at(DEFAULT_LEVEL)
        return (
            main.stream,
            self.dlq,
            main.delayed,
            main.delayed_data,
            main.expiry,
            self.meta,
            self.dedup,
            self.dedup_until,
            self.cron,
            self.cancelled,
            *levels,
        )

    def level_keys(self) -> tuple[str, ...]:
        """The keys of this level alone: stream, delayed, delayed data, expiry."""
        return (self.stream, self.delayed, self.delayed_data, self.expiry)


def registry_key(prefix: str) -> str:
    """The set that lists the base names of all queues created under ``prefix``."""
    return f"{prefix}{{}}:registry"


def legacy_registry_key(prefix: str) -> str:
    """Where earlier versions kept the registry: LeanMQ 0.2's own registry key (read only)."""
    return f"{prefix}registry"


def results_channel(prefix: str) -> str:
    """The pub/sub channel on which workers announce stored results under ``prefix``."""
    return f"{prefix}results"


def cancel_channel(prefix: str) -> str:
    """The pub/sub channel announcing cancel requests under ``prefix`` (``queue stream-id``)."""
    return f"{prefix}cancel"
