"""Helpers shared by the worker tests and the worker apps they run as subprocesses.

The apps are small modules run with ``python -m tests.worker_apps.<name>`` from the
repository root. Each reads its Redis URL and key prefix from the environment
(``LEANMQ_TEST_URL``, ``LEANMQ_TEST_PREFIX``) and runs ``await mq.run_worker(...)`` itself.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[2]

ENV_URL = "LEANMQ_TEST_URL"
ENV_PREFIX = "LEANMQ_TEST_PREFIX"


def app_command(name: str) -> list[str]:
    """The command line that runs ``tests/worker_apps/<name>.py`` as a module."""
    return [sys.executable, "-m", f"tests.worker_apps.{name}"]


def app_env(url: str, prefix: str, **extra: object) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV_URL] = url
    env[ENV_PREFIX] = prefix
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_app(name: str, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a worker app; its output goes to ``log`` (read it when an assertion fails)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            app_command(name),
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    """The log records of the structlog event ``name`` captured so far."""
    return [r for r in caplog.records if r.msg == name]


def log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no output)"


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool],
    within: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` (sync or async) until true; fail after ``within`` seconds."""
    try:
        with anyio.fail_after(within):
            while True:
                result = predicate()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await anyio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None


async def group_info(raw: aioredis.Redis, stream: str, group: str) -> dict[str, Any]:
    """XINFO GROUPS of ``stream`` for ``group`` (keys as str)."""
    for info in await raw.xinfo_groups(stream):
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name == group:
            return {str(k): v for k, v in info.items()}
    raise AssertionError(f"no group {group!r} on {stream!r}")


async def pending_count(raw: aioredis.Redis, stream: str, group: str) -> int:
    summary = await raw.xpending(stream, group)
    return int(summary["pending"])


async def settled(raw: aioredis.Redis, stream: str, group: str) -> bool:
    """True when ``group`` has read everything and holds nothing pending."""
    info = await group_info(raw, stream, group)
    return int(info["pending"]) == 0 and info["lag"] == 0


async def blocked_readers(raw: aioredis.Redis) -> int:
    """How many clients of the server are blocked in XREADGROUP right now."""
    clients = await raw.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))


# redis-py types its replies as wide unions; the raw client here always returns bytes.
Fields = dict[bytes, bytes]
Entry = tuple[bytes, Fields]


async def entries(raw: aioredis.Redis, stream: str) -> list[Entry]:
    """Every entry of ``stream`` (XRANGE - +)."""
    return cast("list[Entry]", await raw.xrange(stream))


async def add_entry(raw: aioredis.Redis, stream: str, fields: Fields) -> bytes:
    """XADD ``fields`` as they are (to write entries no producer of ours would)."""
    return cast(bytes, await raw.xadd(stream, cast(Any, fields)))


async def read_as(
    raw: aioredis.Redis, group: str, consumer: str, stream: str, count: int
) -> list[Entry]:
    """XREADGROUP new entries as ``consumer`` of ``group``, like another worker would."""
    reply = cast(Any, await raw.xreadgroup(group, consumer, {stream: ">"}, count=count))
    return list(reply[0][1]) if reply else []


async def list_items(raw: aioredis.Redis, key: str) -> list[str]:
    return [cast(bytes, item).decode() for item in await raw.lrange(key, 0, -1)]


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default
