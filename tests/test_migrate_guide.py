"""The README's "Migrating from LeanMQ 0.2", run as written against ``leanmq==0.2.0``."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import leanmq
import pytest

from leanmq_async import LeanMQ
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import wait_until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


def guide_commands() -> list[list[str]]:
    """The ``leanmq`` commands of the guide's ``sh`` blocks, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Migrating from LeanMQ 0.2\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("leanmq ")]


def test_the_guide_is_the_one_tested_here() -> None:
    assert [" ".join(c) for c in guide_commands()] == [
        "leanmq migrate --all --dry-run",
        "leanmq migrate --all --confirm",
        "leanmq bridge",
        "leanmq migrate --all --dry-run",
    ]


def env_for(server: RedisServer, prefix: str) -> dict[str, str]:
    # The guide's `export LEANMQ_URL=... LEANMQ_PREFIX=...`, for this test's server.
    return {**os.environ, "LEANMQ_URL": server.url, "LEANMQ_PREFIX": prefix}


def as_process(command: list[str]) -> list[str]:
    assert command[0] == "leanmq"  # the console script, run from this venv
    return [sys.executable, "-m", "leanmq_async.ops.admin_cli", *command[1:]]


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_process(command), env=env, capture_output=True, text=True, timeout=60)


def spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        as_process(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)


def old_queues(server: RedisServer, prefix: str) -> leanmq.LeanMQ:
    """LeanMQ 0.2 as its users run it: waiting, pending (a consumer died) and DLQ entries."""
    mq = leanmq.LeanMQ(redis_host="127.0.0.1", redis_port=server.port, prefix=prefix)
    queue, dlq = mq.create_queue_pair("orders")
    for i in range(20):
        queue.send_message({"order": i}, ttl=3600 if i % 2 else None)
    first = queue.get_messages(count=6, consumer_id="died")
    queue.acknowledge_messages([first[0].id])
    queue.move_to_dlq([first[1].id], "card declined", dlq)
    return mq


async def test_cut_over_with_a_pause(redis_server: RedisServer, prefix: str) -> None:
    dry_run, confirm, _, _ = guide_commands()
    env = env_for(redis_server, prefix)
    old_queues(redis_server, prefix).close()

    shown = run(dry_run, env)  # step 1
    assert shown.returncode == 0, shown.stderr
    assert "orders: would move 14 waiting, 4 pending" in shown.stdout
    assert "1 dead letters" in shown.stdout
    moved = run(confirm, env)  # step 3
    assert moved.returncode == 0, moved.stderr
    assert "orders: moved 14 waiting, 4 pending (delivered again), 1 dead letters" in moved.stdout

    async with LeanMQ(redis_server.url, prefix=prefix) as mq:  # step 4
        orders = mq.queue("orders")
        handled: Counter[int] = Counter()

        @orders.handler()
        async def handle(data: dict[str, int]) -> None:
            handled[data["order"]] += 1

        await mq.run_worker(burst=True, **FAST)
        assert handled == Counter(range(2, 20))  # 0 was acknowledged, 1 dead-lettered
        (dead,) = await (await mq.get_dead_letter_queue("orders")).get_messages()
        assert dead.data == {"order": 1}
        assert dead.dead_letter is not None and dead.dead_letter.reason == "card declined"
    again = run(confirm, env)  # re-running is harmless
    assert "moved 0 waiting, 0 pending (delivered again), 0 dead letters" in again.stdout


async def test_rolling_cut_over(redis_server: RedisServer, prefix: str) -> None:
    _, _, bridge_cmd, check = guide_commands()
    env = env_for(redis_server, prefix)
    old = old_queues(redis_server, prefix)
    queue = old.get_queue("orders")
    assert queue is not None
    hook = leanmq.LeanMQWebhook(redis_host="127.0.0.1", redis_port=redis_server.port, prefix=prefix)

    bridge = spawn(bridge_cmd, env)  # step 1
    handled: Counter[Any] = Counter()
    try:
        async with LeanMQ(redis_server.url, prefix=prefix) as mq:
            for name in ("orders", "order_paid"):

                @mq.queue(name).handler(concurrency=5)
                async def handle(data: dict[str, Any]) -> None:
                    handled[data.get("order", data.get("paid"))] += 1

            async with mq.worker(**FAST):  # step 2
                # Step 3: the LeanMQ 0.2 producers keep writing until they are upgraded.
                def produce() -> None:
                    for i in range(100, 200):
                        queue.send_message({"order": i})
                        hook.send("/order/paid", {"paid": -i})
                        time.sleep(0.001)

                thread = threading.Thread(target=produce)
                thread.start()
                await anyio.to_thread.run_sync(thread.join)
                want = {*range(2, 20), *range(100, 200), *(-i for i in range(100, 200))}
                await wait_until(
                    lambda: want - {2, 3, 4, 5} <= set(handled), within=60, what="all handled"
                )
                # The 4 messages the dead 0.2 consumer held stay until idle --min-idle (60 s);
                # XCLAIM's IDLE lets that minute pass without waiting for it.
                held = [p["message_id"] for p in old.client.xpending_range(
                    f"{prefix}orders", "orders-group", "-", "+", 10
                )]  # fmt: skip
                assert len(held) == 4
                old.client.xclaim(
                    f"{prefix}orders", "orders-group", "died", 0, held, idle=120_000, justid=True
                )
                await wait_until(lambda: want <= set(handled), within=60, what="held ones too")

            shown = run(check, env)  # step 4: nothing left to move
            assert shown.returncode == 0, shown.stderr
            for name in ("orders", "order_paid"):
                assert f"{name}: would move 0 waiting, 0 pending (delivered again), 0 dead" in (
                    shown.stdout
                )
            out, err = stop(bridge)
            assert bridge.returncode == 0, err
            assert "bridge stopped after" in out
    finally:
        if bridge.poll() is None:
            bridge.kill()
        old.close()
        hook.close()
    assert max(handled.values()) == 1
