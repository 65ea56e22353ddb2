"""Choosing the Redis client of a LeanMQ: borrowed, Sentinel, cluster or single node."""

from __future__ import annotations

import os
from collections.abc import Sequence

from leanmq_async.cluster import AnyRedis, build_redis_client, sentinel_url
from leanmq_async.connection import ConnectionSettings, build_url, check_borrowed_client
from leanmq_async.exceptions import ConfigurationError

__all__ = ["choose_client", "redact_url"]


def choose_client(
    url: str | None,
    client: AnyRedis | None,
    settings: ConnectionSettings,
    *,
    redis_host: str | None,
    redis_port: int | None,
    redis_db: int | None,
    redis_password: str | None,
    redis_username: str | None,
    ssl: bool,
    cluster: bool,
    sentinels: Sequence[tuple[str, int]] | None,
    service_name: str | None,
) -> tuple[AnyRedis, str, bool]:
    """``(client, url, owned)`` from LeanMQ's connection arguments (see :class:`LeanMQ`)."""
    keywords = (redis_host, redis_port, redis_db, redis_password, redis_username)
    keywords_given = ssl or any(k is not None for k in keywords)
    if client is not None:
        if url is not None:
            raise ConfigurationError("pass either url or client, not both")
        check_borrowed_client(client)
        return client, "<borrowed client>", False
    if sentinels is not None or service_name is not None:
        if url is not None or cluster or redis_host is not None or redis_port is not None:
            raise ConfigurationError(
                "sentinels/service_name replace url, cluster, redis_host and redis_port"
            )
        url = sentinel_url(
            sentinels or [], service_name or "", redis_db or 0, redis_username,
            redis_password, ssl,
        )  # fmt: skip
        return build_redis_client(url, settings), url, True
    url = (
        url
        or (None if keywords_given else os.environ.get("LEANMQ_URL"))
        or build_url(
            redis_host or "localhost",
            6379 if redis_port is None else redis_port,
            redis_db or 0,
            redis_password,
            redis_username,
            ssl,
        )
    )
    return build_redis_client(url, settings, cluster=cluster), url, True


def redact_url(url: str) -> str:
    """``url`` with its user and password replaced by ``***`` (for logs and reprs)."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
