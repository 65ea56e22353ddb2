"""Migration from LeanMQ 0.2 (the real ``leanmq==0.2.0`` package): keys, detection,
``leanmq migrate`` killed with SIGKILL and re-run, and the bridge during a cut-over."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, cast

import anyio
import httpx
import leanmq
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Message, QueueNotFoundError
from leanmq_async.keys import QueueKeys, legacy_registry_key, registry_key
from leanmq_async.legacy import LEGACY_EVENT, find_legacy_queues
from leanmq_async.ops import admin_app
from leanmq_async.ops.health import check_health
from leanmq_async.ops.migrate import migrate, migrate_registry
from leanmq_async.ops.stats import collect_stats
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import wait_until

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


def old_mq(server: RedisServer, prefix: str) -> leanmq.LeanMQ:
    return leanmq.LeanMQ(redis_host="127.0.0.1", redis_port=server.port, prefix=prefix)


def cli_cmd(server: RedisServer, prefix: str, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "leanmq_async.ops.admin_cli",
        "--url", server.url, "--prefix", prefix, *args,
    ]  # fmt: skip


def spawn(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def finish(proc: subprocess.Popen[str], sig: int | None = None) -> tuple[str, str]:
    """Send ``sig`` (if given), wait for the process, return its output."""
    if sig is not None:
        proc.send_signal(sig)
    return proc.communicate(timeout=60)


def fill(server: RedisServer, prefix: str, name: str, n: int) -> dict[str, Any]:
    """A LeanMQ 0.2 queue with acked history, pending, waiting (every 3rd with a TTL) and
    dead letters; returns the expected message ids per kind and the TTL'd ones."""
    mq = old_mq(server, prefix)
    queue, dlq = mq.create_queue_pair(name)
    ttl_ids: dict[str, float] = {}
    for i in range(n):
        sid = queue.send_message(
            {"n": i, "name": name, "f": 0.1 + i / 3}, ttl=3600 if i % 3 == 0 else None
        )
        if i % 3 == 0:
            ttl_ids[sid] = 0.0
    got = queue.get_messages(count=n // 2, consumer_id="old-worker")
    acked = got[: n // 10]
    dead = got[n // 10 : n // 5]
    pending = got[n // 5 :]
    queue.acknowledge_messages([m.id for m in acked])
    for m in dead:
        queue.move_to_dlq([m.id], f"bad order {m.data['n']}", dlq)
    raw = mq.client
    for sid in ttl_ids:
        score = raw.zscore(f"{prefix}{name}:expiry", sid)
        if score is not None:
            ttl_ids[sid] = float(score)
    uuid_of = {}
    for sid, fields in raw.xrange(f"{prefix}{name}"):
        uuid_of[sid.decode()] = json.loads(fields[b"data"])["_metadata"]["id"]
    dead_uuids = {
        json.loads(f[b"data"])["_metadata"]["id"]: json.loads(f[b"data"])["_failures"][-1]["reason"]
        for _, f in raw.xrange(f"{prefix}{name}:dlq")
    }
    mq.close()
    to_handle = set(uuid_of.values()) - {uuid_of[m.id] for m in acked + dead}
    return {
        "handle": to_handle,
        "dead": dead_uuids,
        "pending": len(pending),
        "waiting": n - len(got),
        "ttl": {uuid_of[s]: t for s, t in ttl_ids.items() if uuid_of[s] in to_handle},
    }


# -- keys ---------------------------------------------------------------------------------


async def test_no_key_is_shared_with_leanmq_0_2(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    old = old_mq(redis_server, prefix)
    q, dlq = old.create_queue_pair("orders")
    q.send_message({"a": 1}, ttl=60)
    q.move_to_dlq([q.get_messages()[0].id], "x", dlq)
    old_keys = {k.decode() async for k in raw.scan_iter(match=f"{prefix}*")}
    before = {k: await raw.dump(k) for k in old_keys}
    async with LeanMQ(redis_server.url, prefix=prefix) as mq:
        queue, _ = await mq.create_queue_pair("orders")  # the same name
        await queue.send_message({"a": 2}, ttl=60)
        await queue.send_message({"a": 3}, delay=60)
        (msg,) = await queue.get_messages()
        await queue.move_to_dlq([msg.id], "y")
        assert [i.name for i in await mq.list_queues()] == ["orders", "orders:dlq"]
    ours = {k.decode() async for k in raw.scan_iter(match=f"{prefix}*")} - old_keys
    assert registry_key(prefix) in ours
    assert ours <= {*QueueKeys(prefix, "orders").all(), registry_key(prefix)}
    assert not ours & old_keys
    assert all(k.startswith(prefix + "{") for k in ours)
    for k in old_keys:  # LeanMQ 0.2's keys untouched
        assert await raw.dump(k) == before[k], k
    assert [i.name for i in old.list_queues()] != []
    old.close()


async def test_a_registry_written_by_the_previous_version_still_lists_its_queues(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix) as mq:
        await mq.create_queue_pair("orders")
        await mq.create_queue_pair("billing")
    # What the previous version left: its names in {prefix}registry (LeanMQ 0.2's key,
    # here shared with a LeanMQ 0.2 queue), nothing in the new registry.
    await raw.delete(registry_key(prefix))
    await raw.sadd(legacy_registry_key(prefix), "orders", "billing", "gone")
    old = old_mq(redis_server, prefix)
    old.create_queue_pair("legacy")  # adds "{prefix}legacy" and "{prefix}legacy:dlq"
    old.close()
    async with LeanMQ(redis_server.url, prefix=prefix) as mq:
        names = [i.name for i in await mq.list_queues()]
        assert names == ["billing", "billing:dlq", "orders", "orders:dlq"]  # no invented rows
        stats = await collect_stats(mq)
        assert [q.name for q in stats.queues] == ["billing", "orders"]
        assert [q.name for q in stats.legacy] == ["legacy"]
        # Moving the registry: our names move, LeanMQ 0.2's stay where they are.
        assert await migrate_registry(mq, dry_run=True) == 2
        assert await migrate_registry(mq) == 2
        assert await raw.smembers(registry_key(prefix)) == {b"orders", b"billing"}
        assert await raw.smembers(legacy_registry_key(prefix)) == {
            b"gone",
            f"{prefix}legacy".encode(),
            f"{prefix}legacy:dlq".encode(),
        }
        assert [i.name for i in await mq.list_queues()] == names
        assert await migrate_registry(mq) == 0


# -- detection ----------------------------------------------------------------------------


async def test_legacy_queues_are_reported_with_their_counts(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    expected = fill(redis_server, prefix, "orders", 30)
    caplog.set_level(logging.INFO, logger="leanmq_async")
    async with LeanMQ(redis_server.url, prefix=prefix) as mq:
        assert await mq.list_queues() == []
        assert await mq.list_queues() == []
        (record,) = [r for r in caplog.records if r.msg == LEGACY_EVENT]  # once per client
        assert record.queues == {  # type: ignore[attr-defined]
            "orders": {"waiting": 15, "pending": 9, "dlq": 3}
        }
        assert "leanmq migrate" in record.advice  # type: ignore[attr-defined]
        (found,) = await find_legacy_queues(mq)
        assert (found.waiting, found.pending, found.dead) == (
            expected["waiting"], expected["pending"], len(expected["dead"]),
        )  # fmt: skip
        stats = await collect_stats(mq)
        assert stats.to_dict()["legacy"][0]["waiting"] == 15
        report = await check_health(mq)
        assert report.status == "warning"
        (issue,) = report.issues
        assert issue.check == "legacy" and "leanmq migrate" in issue.message

        # The dashboard's data, and the advice of a "not found" error.
        app = admin_app(mq)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://admin"
        ) as http:
            body = (await http.get("/stats")).json()
            assert body["legacy"][0]["name"] == "orders"
            assert body["legacy"][0]["dead"] == 3
            page = (await http.get("/")).text
            assert "legacy-section" in page
        with pytest.raises(QueueNotFoundError, match="leanmq migrate orders --dry-run"):
            await mq.get_queue("orders")
        with pytest.raises(QueueNotFoundError, match="leanmq migrate orders"):
            await mq.queue("orders").get_messages()

        caplog.clear()
        queue = mq.queue("orders")

        @queue.handler()
        async def handle(data: Any) -> None:
            pass

        async with mq.worker(**FAST):
            await wait_until(lambda: any(r.msg == LEGACY_EVENT for r in caplog.records))
        assert [r.msg for r in caplog.records].count(LEGACY_EVENT) == 1
        # The worker read none of them (a different layout): nothing handled, nothing lost.
        (found,) = await find_legacy_queues(mq)
        assert found.waiting == 15


# -- migrate, killed and re-run -----------------------------------------------------------


async def test_migrate_killed_at_random_points_then_rerun_loses_and_duplicates_nothing(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    rng = random.Random(os.environ.get("MIGRATE_SEED", "15"))
    expected = {
        name: fill(redis_server, prefix, name, n) for name, n in (("orders", 900), ("mails", 300))
    }
    total = sum(len(e["handle"]) + len(e["dead"]) for e in expected.values())

    async def moved() -> int:
        n = 0
        for name in expected:
            keys = QueueKeys(prefix, name)
            n += await raw.xlen(keys.stream) if await raw.exists(keys.stream) else 0
            n += await raw.xlen(keys.dlq) if await raw.exists(keys.dlq) else 0
        return n

    kills, partial, points = 0, 0, []
    while True:
        proc = spawn(cli_cmd(redis_server, prefix, "migrate", "--all", "--confirm", "--batch", "2"))
        if partial < 10 and kills < 60:
            # Kill at a random point once it is moving (else most kills would land during
            # the interpreter's start-up).
            before = await moved()

            async def started(p: subprocess.Popen[str] = proc, n: int = before) -> bool:
                return p.poll() is not None or await moved() != n

            await wait_until(started, within=60, interval=0.002, what="migrate moving")
            await anyio.sleep(rng.uniform(0.0, 0.2))
            if proc.poll() is None:
                finish(proc, signal.SIGKILL)
                kills += 1
                after = await moved()
                partial += 0 < after < total and after > before
                points.append(after)
                continue
        out, err = finish(proc)
        assert proc.returncode == 0, err
        break
    print(  # noqa: T201
        f"\nmigrate: {kills} SIGKILLs ({partial} mid-way, after {points} of {total} moved), "
        f"then a clean run: {out.strip()}"
    )
    assert partial >= 2

    async with LeanMQ(redis_server.url, prefix=prefix) as mq:
        for found in await find_legacy_queues(mq):
            assert found.total == 0, found  # only acknowledged history is left
        # Moved exactly once: every expected id once in the new streams, TTLs kept.
        for name, e in expected.items():
            keys = QueueKeys(prefix, name)
            ids: Counter[str] = Counter()
            rows = cast(list[tuple[bytes, dict[bytes, bytes]]], await raw.xrange(keys.stream))
            for sid, fields in rows:
                env = json.loads(fields[b"j"])
                ids[env["id"]] += 1
                if env["id"] in e["ttl"]:
                    assert int(fields[b"x"]) == round(e["ttl"][env["id"]] * 1000)
                    assert await raw.zscore(keys.expiry, sid) is not None
                else:
                    assert b"x" not in fields
            assert ids == Counter(e["handle"]), name

        # A leanmq_async worker handles every message exactly once.
        handled: Counter[str] = Counter()
        for name in expected:

            @mq.queue(name).handler(concurrency=20)
            async def handle(msg: Message[dict[str, Any]]) -> None:
                assert msg.data["name"] in expected and "_metadata" not in msg.data
                handled[msg.message_id] += 1

        await mq.run_worker(burst=True, **FAST)
        want = Counter(u for e in expected.values() for u in e["handle"])
        assert handled == want
        assert max(handled.values()) == 1

        # Dead letters intact: payload, message id, reason.
        dead_count = 0
        for name, e in expected.items():
            dlq = await mq.get_dead_letter_queue(name)
            got = {m.message_id: m for m in await dlq.get_messages(count=1000)}
            assert set(got) == set(e["dead"])
            for uuid, reason in e["dead"].items():
                info = got[uuid].dead_letter
                assert info is not None and info.reason == reason
                assert info.source_queue == name and got[uuid].data["name"] == name
                assert "_failures" not in got[uuid].data
            dead_count += len(got)
    print(  # noqa: T201
        f"migrate: {sum(want.values())} messages handled exactly once "
        f"({sum(e['pending'] for e in expected.values())} were pending, "
        f"{sum(e['waiting'] for e in expected.values())} waiting), {dead_count} dead letters intact"
    )


async def test_migrate_cli_needs_dry_run_or_confirm(redis_server: RedisServer, prefix: str) -> None:
    fill(redis_server, prefix, "orders", 10)
    usage = run(cli_cmd(redis_server, prefix, "migrate", "--all"))
    assert usage.returncode == 2 and "--confirm" in usage.stderr
    dry = run(cli_cmd(redis_server, prefix, "--json", "migrate", "--all", "--dry-run"))
    assert dry.returncode == 0, dry.stderr
    (report,) = json.loads(dry.stdout)["queues"]
    assert (report["waiting"], report["pending"], report["dead"]) == (5, 3, 1)
    missing = run(
        cli_cmd(redis_server, prefix, "migrate", "nope", "--confirm"),
    )
    assert missing.returncode == 1 and "orders" in missing.stderr
    async with LeanMQ(redis_server.url, prefix=prefix) as mq:
        assert await mq.list_queues() == []  # the dry run changed nothing


# -- bridge -------------------------------------------------------------------------------


async def test_bridge_while_leanmq_0_2_producers_keep_writing_loses_nothing(
    redis_server: RedisServer, prefix: str
) -> None:
    n = 400
    old = old_mq(redis_server, prefix)
    queue, _ = old.create_queue_pair("orders")
    queue.send_message({"n": -1, "early": True})  # waiting before the cut-over
    hook = leanmq.LeanMQWebhook(redis_host="127.0.0.1", redis_port=redis_server.port, prefix=prefix)
    hook.send("/order/created", {"n": -2})

    bridge_cmd = cli_cmd(redis_server, prefix, "bridge", "--interval", "0.02", "--min-idle", "0")
    bridge = spawn(bridge_cmd)
    sent: list[int] = []

    def produce() -> None:  # LeanMQ 0.2 producers, still running during the cut-over
        for i in range(n):
            if i % 4 == 0:
                hook.send("/order/created", {"n": i})
            else:
                queue.send_message({"n": i}, ttl=3600 if i % 5 == 0 else None)
            sent.append(i)
            time.sleep(0.004)

    handled: Counter[int] = Counter()
    try:
        async with LeanMQ(redis_server.url, prefix=prefix) as mq:
            for name in ("orders", "order_created"):

                @mq.queue(name).handler(concurrency=10)
                async def handle(data: dict[str, Any]) -> None:
                    handled[data["n"]] += 1

            async with mq.worker(**FAST):
                # The bridge runs (what was waiting before the cut-over is handled) ...
                await wait_until(lambda: {-1, -2} <= set(handled), within=60, what="bridged")
                thread = threading.Thread(target=produce)  # ... while 0.2 producers write.
                thread.start()
                # Mid-way, the bridge is killed (-9) and another one started.
                await wait_until(lambda: len(handled) >= n // 4, within=60, what="a quarter")
                finish(bridge, signal.SIGKILL)
                sent_at_kill = len(sent)
                bridge = spawn(bridge_cmd)
                await anyio.to_thread.run_sync(thread.join)
                await wait_until(lambda: len(handled) >= n + 2, within=60, what="all handled")
                await anyio.sleep(0.3)  # a late duplicate would show up here
            out, err = finish(bridge, signal.SIGTERM)
            assert bridge.returncode == 0, err
            for found in await find_legacy_queues(mq):
                assert found.total == 0
    finally:
        if bridge.poll() is None:
            bridge.kill()
        old.close()
        hook.close()
    assert set(handled) == set(range(-2, n)) and max(handled.values()) == 1
    print(  # noqa: T201
        f"\nbridge: {n + 2} LeanMQ 0.2 messages (queue + webhook) handled once each; "
        f"bridge killed (-9) and restarted after {sent_at_kill} sent; "
        f"{out.strip()}"
    )


async def test_migrate_into_a_queue_in_use_and_odd_entries(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    payload = {"text": "caf\u00e9 \u2603", "big": 2**70, "f": 0.1 + 0.2, "nested": [{"a": None}]}
    old = old_mq(redis_server, prefix)
    queue, _ = old.create_queue_pair("orders")
    first = queue.send_message(payload, ttl=600)
    await raw.xadd(f"{prefix}orders", {"foo": "bar", "x": "not a number"})  # not LeanMQ 0.2's
    old.close()
    async with LeanMQ(redis_server.url, prefix=prefix) as mq:
        orders, _ = await mq.create_queue_pair("orders")
        await orders.send_message({"new": True})  # a newer id than the 0.2 entries
        (report,) = await migrate(mq)
        assert (report.waiting, report.pending, report.dead) == (2, 0, 0)
        got = await orders.get_messages(count=10)
        assert [m.data for m in got] == [{"new": True}, payload]  # the foreign one: see below
        moved = got[1]
        assert moved.headers["leanmq02.id"] == first
        assert moved.id != first  # the 0.2 id no longer sorts last: a new one, kept in a header
        assert moved.expires_at is not None
        # The foreign entry moved unchanged, and was dead-lettered as undecodable on read.
        dlq = await mq.get_dead_letter_queue("orders")
        (dead,) = await dlq.get_messages()
        assert dead.dead_letter is not None
        assert "not a leanmq message" in dead.dead_letter.reason
