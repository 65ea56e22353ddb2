"""The CLIs and ``LeanMQ()`` read the same environment: LEANMQ_URL and LEANMQ_PREFIX."""

from __future__ import annotations

import json

import anyio
import pytest

from leanmq_async import LeanMQ
from leanmq_async.ops.admin_cli import main
from leanmq_async.testing import RedisServer

pytestmark = pytest.mark.anyio


async def test_leanmq_reads_the_prefix_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LEANMQ_PREFIX", raising=False)
    assert LeanMQ().prefix == "mq:"
    monkeypatch.setenv("LEANMQ_PREFIX", "shop:")
    assert LeanMQ().prefix == "shop:"
    assert LeanMQ(prefix="other:").prefix == "other:"  # an argument wins


async def test_admin_cli_sees_the_queues_of_a_client_configured_by_environment(
    redis_server: RedisServer,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LEANMQ_URL", redis_server.url)
    monkeypatch.setenv("LEANMQ_PREFIX", prefix)
    async with LeanMQ() as mq:  # neither url nor prefix: both from the environment
        queue, _ = await mq.create_queue_pair("orders")
        await queue.send_messages([{"n": 1}, {"n": 2}])
        messages = await queue.get_messages(count=2)
        await queue.acknowledge_messages([m.id for m in messages])
    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, ["stats", "--json"]) == 0
    (stats,) = json.loads(capsys.readouterr().out)["queues"]
    assert (stats["name"], stats["length"], stats["backlog"]) == ("orders", 2, 0)
    assert await anyio.to_thread.run_sync(main, ["stats"]) == 0
    text = capsys.readouterr().out
    # Depth 2 with nothing left to do: the legend says why.
    assert "DEPTH counts every entry kept in the stream, acknowledged history included" in text
    assert "BACKLOG = LAG + PENDING" in text
