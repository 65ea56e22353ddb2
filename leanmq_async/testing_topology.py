"""What the throwaway test topologies share: redis-cli, admin connections, waiting."""

from __future__ import annotations

import os
import random
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

from leanmq_async.testing import find_redis_server, free_port

T = TypeVar("T")


def find_redis_cli() -> str:
    """The path of ``redis-cli`` (next to redis-server, or on PATH)."""
    explicit = os.environ.get("LEANMQ_REDIS_CLI")
    if explicit:
        return explicit
    sibling = Path(find_redis_server()).with_name("redis-cli")
    if sibling.exists():
        return str(sibling)
    found = shutil.which("redis-cli")
    if found:
        return found
    raise FileNotFoundError("redis-cli not found: install Redis or set LEANMQ_REDIS_CLI")


def _wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.05
) -> T:
    """Call ``probe`` until it returns something not None (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
        except (redis.RedisError, OSError) as exc:
            last, value = exc, None
        if value is not None:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last!r})" if last is not None else ""
            raise TimeoutError(f"{what} did not happen within {timeout}s{detail}")
        time.sleep(interval)


def _admin(port: int, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def _quiet_port() -> int:
    """A free loopback port below the ephemeral range, so no outgoing connection of
    this machine takes it between now and the server's bind (a cluster needs 12)."""
    low, high = 20000, 32000
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        high = min(high, int(text[0]) - 1)
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def _call(port: int, *args: Any) -> Any:
    with _admin(port) as client:
        return client.execute_command(*args)


def _online_replica_of(host: str, port: int, replica_port: int) -> bool:
    """Does the primary on ``port`` see the replica on ``replica_port`` online, and has
    the replica acknowledged an offset yet (until then ``WAIT`` does not count it)?"""
    with _admin(int(port)) as client:
        info = client.info("replication")
    return any(
        isinstance(v, dict)
        and int(v.get("port", 0)) == replica_port
        and v.get("state") == "online"
        and int(v.get("offset", 0)) > 0
        for k, v in info.items()
        if k.startswith("slave")
    )
