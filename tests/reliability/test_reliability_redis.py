"""Redis itself failing: killed under load and restarted from its AOF, restarted empty, a
network black hole, pool pressure, a long idle period, and a least-privilege ACL user.
Cases 4, 5, 6, 19, 20 and 21 of the reliability suite."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import ConnectionSettings, LeanMQ, Message, Reject
from leanmq_async.testing import RedisServer
from tests.reliability.harness import (
    Ledger,
    Producer,
    assert_settled,
    capture_events,
    check,
    commandstats,
    dlq_entries,
    ledger_client,
    report,
    settled,
    wait_until,
)
from tests.reliability.proxy import Proxy

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {"block_ms": 200, "maintenance_interval": 0.05, "grace_period": 5.0}


def done_set(ledger: Ledger) -> set[str]:
    return set(ledger.counts())


# -- case 4 ------------------------------------------------------------------------------


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True, args=["--appendfsync", "always"]) as server:
        yield server


async def test_case04_redis_killed_under_load_and_restarted_from_the_aof(
    aof_redis: RedisServer, prefix: str, ledger: Ledger
) -> None:
    url = aof_redis.url
    w1, queue = ledger_client(url, prefix, ledger, consumer="c4-w1", sleep=0.02,
                              concurrency=20, visibility_timeout=5)  # fmt: skip
    w2, _ = ledger_client(url, prefix, ledger, consumer="c4-w2", sleep=0.02,
                          concurrency=20, visibility_timeout=5)  # fmt: skip
    sender = LeanMQ(url, prefix=prefix)
    raw = aioredis.Redis.from_url(url)
    producer = Producer(sender.queue("work"), "c4")
    stop_producing = anyio.Event()
    marks: dict[str, float] = {}

    async def produce() -> None:
        while not stop_producing.is_set():
            if await producer.send_one() is None:
                await anyio.sleep(0.05)
            else:
                await anyio.sleep(0.001)

    try:
        with capture_events() as events:
            async with w1.worker(**FAST) as worker1, w2.worker(**FAST) as worker2:
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(produce)
                    await wait_until(lambda: len(done_set(ledger)) >= 300, within=30,
                                     what="load before the crash")  # fmt: skip
                    marks["kill"] = time.time()
                    await anyio.to_thread.run_sync(aof_redis.kill)
                    await anyio.sleep(1.0)
                    await anyio.to_thread.run_sync(aof_redis.start)
                    marks["restart"] = time.time()
                    handled_at_restart = len(done_set(ledger))
                    await wait_until(
                        lambda: len(done_set(ledger)) >= handled_at_restart + 300,
                        within=30,
                        what="the workers handling again after the restart",
                    )
                    stop_producing.set()
                confirmed = set(producer.confirmed)
                await wait_until(lambda: confirmed <= done_set(ledger), within=60,
                                 what="every confirmed message handled")  # fmt: skip
                await wait_until(lambda: settled(raw, queue), within=30, what="acks")
            assert worker1.stats.handled and worker2.stats.handled
        await assert_settled(raw, queue)
        rep = check(4, confirmed, ledger, attempted=producer.attempted)
        # Acknowledged before the crash means never again: a second execution is only
        # allowed for what was in flight (handled, ack not yet written) around the crash.
        first_done: dict[str, float] = {}
        for e in ledger.events("done"):
            first_done.setdefault(e["mid"], e["t"])
        around_crash = {m for m, t in first_done.items() if t >= marks["kill"] - 1.0}
        in_flight = {
            e["mid"]
            for e in ledger.events("start")
            if e["t"] < marks["kill"] and first_done.get(e["mid"], 1e18) >= marks["kill"]
        }
        report(
            rep,
            in_flight_at_crash=len(in_flight),
            send_failures=producer.failed,
            unconfirmed_handled=len(done_set(ledger) - confirmed),
            redis_unavailable_logs=events.count("redis_unavailable"),
        )
        assert set(rep.duplicated) <= around_crash
        assert events.count("redis_reconnected") >= 1
    finally:
        await raw.aclose()
        await sender.aclose()
        await w1.aclose()
        await w2.aclose()


# -- case 5 ------------------------------------------------------------------------------


async def test_case05_redis_restarts_empty(
    private_redis: RedisServer, private_raw: aioredis.Redis, prefix: str, ledger: Ledger
) -> None:
    block_ms = 500
    mq, queue = ledger_client(private_redis.url, prefix, ledger, consumer="c5")
    producer = Producer(queue, "c5")
    async with mq:
        with capture_events() as events:
            async with mq.worker(**{**FAST, "block_ms": block_ms}) as worker:
                await producer.send(50)
                await wait_until(lambda: len(done_set(ledger)) == 50, what="before the wipe")
                await anyio.to_thread.run_sync(lambda: private_redis.restart(wipe=True))
                await wait_until(lambda: events.count("group_created") >= 1, within=30,
                                 what="the group recreated")  # fmt: skip
                # Idle: the worker blocks on the new group instead of spinning.
                before = (await commandstats(private_raw)).get("xreadgroup", 0)
                await anyio.sleep(2.0)
                after = (await commandstats(private_raw)).get("xreadgroup", 0)
                reads = after - before
                new = await producer.send(50)
                await wait_until(lambda: set(new) <= done_set(ledger), within=30,
                                 what="new messages handled")  # fmt: skip
                await wait_until(lambda: settled(private_raw, queue), what="acks")
                assert events.count("group_created") == 1
                assert worker.stats.handled == 100
        await assert_settled(private_raw, queue)
        rep = check(5, producer.confirmed, ledger)
        report(rep, group_created_logs=events.count("group_created"), idle_reads_2s=reads)
        # One blocking read per block_ms (and a few around the recreation), not a spin.
        assert reads <= 2 * (2000 // block_ms) + 4


# -- case 6 ------------------------------------------------------------------------------


SHORT_TIMEOUTS = ConnectionSettings(
    socket_timeout=2.0, socket_connect_timeout=1.0, health_check_interval=1.0
)


async def black_hole_then_heal(
    server: RedisServer,
    prefix: str,
    ledger: Ledger,
    mode: str,
    seconds: float,
    settings: ConnectionSettings | None,
    settle_timeout: float = 10.0,
) -> None:
    """``settings``: the worker's connection settings (None: the library's defaults, whose
    30 s socket timeout outlasts the 10 s settle timeout). A black hole longer than
    ``settle_timeout`` makes the worker give up writing acks for a while."""

    async def behave(message: Message[dict[str, Any]]) -> None:
        if message.data["mid"].startswith("c6slow"):
            await anyio.sleep(0.5)  # finishes inside the black hole: its ack cannot pass

    with Proxy(server.port) as proxy:
        mq, queue = ledger_client(proxy.url, prefix, ledger, consumer="c6",
                                  connection=settings, concurrency=50,
                                  visibility_timeout=2, behaviour=behave)  # fmt: skip
        sender = LeanMQ(server.url, prefix=prefix)  # the producer does not go through it
        raw = aioredis.Redis.from_url(server.url)
        producer = Producer(sender.queue("work"), "c6")
        slow = Producer(sender.queue("work"), "c6slow")
        try:
            with capture_events() as events:
                worker = mq.worker(**{**FAST, "block_ms": 500, "settle_timeout": settle_timeout})
                async with anyio.create_task_group() as tg:
                    await tg.start(worker.serve)
                    first = await producer.send(100)
                    await wait_until(lambda: set(first) <= done_set(ledger), what="warm-up")
                    held = set(await slow.send(20))
                    await wait_until(lambda: len(ledger.events("start")) == 120, what="held")
                    proxy.black_hole(mode)  # type: ignore[arg-type]
                    during = set()
                    with anyio.move_on_after(seconds):
                        while True:  # messages keep arriving during the black hole
                            during |= set(await producer.send(10))
                            await anyio.sleep(0.1)
                    proxy.heal()
                    await wait_until(lambda: (during | held) <= done_set(ledger), within=60,
                                     what="the black hole's messages handled")  # fmt: skip
                    after = set(await producer.send(100))
                    await wait_until(lambda: after <= done_set(ledger), within=30,
                                     what="messages after the heal")  # fmt: skip
                    proxy.cut()  # and a middlebox resetting every connection at once
                    after = set(await producer.send(100))
                    await wait_until(lambda: after <= done_set(ledger), within=30,
                                     what="messages after the reset")  # fmt: skip
                    await wait_until(lambda: settled(raw, queue), within=60, what="acks")
                    health = await worker.health()
                    assert health["worker"]["running"]  # the worker stayed up
                    worker.stop()
            await assert_settled(raw, queue)
            assert proxy.cuts == 1
            confirmed = {**producer.confirmed, **slow.confirmed}
            # The black hole's time limit can cancel a send after Redis ran it: written,
            # never confirmed, so it counts as attempted (it may be handled), not unknown.
            attempted = [*producer.attempted, *slow.attempted]
            rep = check(6, confirmed, ledger, attempted=attempted)
            report(
                rep,
                mode=mode,
                seconds=seconds,
                timeouts="short" if settings else "default",
                settle_timeout=settle_timeout,
                in_flight_at_hole=len(held),
                sent_during=len(during),
                redis_unavailable=events.count("redis_unavailable"),
                reconnected=events.count("redis_reconnected"),
                reclaimed=worker.stats.reclaimed,
                proxy_connections=proxy.accepted,
            )
            # Nothing runs twice: what finished inside the black hole keeps its ack until it
            # can be written, and the worker does not reclaim (and rerun) its own handled
            # messages meanwhile; a read executed whose reply was lost is reclaimed once.
            assert not rep.duplicated
            if settings is not None:  # with short timeouts the outage is seen, and healed
                assert events.count("redis_unavailable") >= 1
                assert events.count("redis_reconnected") >= 1
        finally:
            await raw.aclose()
            await sender.aclose()
            await mq.aclose()


@pytest.mark.parametrize("mode", ["freeze", "drop"])
async def test_case06_network_black_hole_then_heal(
    private_redis: RedisServer, prefix: str, ledger: Ledger, mode: str
) -> None:
    await black_hole_then_heal(private_redis, prefix, ledger, mode, 5.0, SHORT_TIMEOUTS, 2.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("timeouts", ["short", "default"])
@pytest.mark.parametrize("mode", ["freeze", "drop"])
async def test_case06_network_black_hole_then_heal_30s(
    private_redis: RedisServer, prefix: str, ledger: Ledger, mode: str, timeouts: str
) -> None:
    settings = SHORT_TIMEOUTS if timeouts == "short" else None
    await black_hole_then_heal(private_redis, prefix, ledger, mode, 30.0, settings)


# -- case 19 -----------------------------------------------------------------------------


async def pool_pressure(server: RedisServer, prefix: str, ledger: Ledger, seconds: float) -> None:
    mq = LeanMQ(server.url, prefix=prefix, consumer_name="c19")
    heavy = mq.queue("heavy")
    light = mq.queue("light")
    counter = f"{prefix}counter"
    calls = {"ok": 0, "errors": 0}
    end = float("inf")  # set when the load starts
    errors: list[str] = []

    @heavy.handler(concurrency=500, visibility_timeout=2)
    async def hammer(message: Message[dict[str, Any]]) -> None:
        ledger.record(message.data["mid"], "start")
        while anyio.current_time() < end:
            try:
                await mq.redis.incr(counter)
            except Exception as exc:
                calls["errors"] += 1
                errors.append(repr(exc))
                raise
            calls["ok"] += 1
        ledger.record(message.data["mid"], "done")

    @light.handler(concurrency=10, visibility_timeout=1)
    async def quick(message: Message[dict[str, Any]]) -> None:
        ledger.record(message.data["mid"], "done", t_loop=anyio.current_time())

    raw = aioredis.Redis.from_url(server.url)
    heavy_producer = Producer(heavy, "c19h")
    light_producer = Producer(light, "c19l")
    try:
        # A dead consumer holds messages: they are reclaimed under the pressure below.
        await mq.create_queue_pair("light")
        await light_producer.send(20)
        reply: Any = await raw.xreadgroup(
            light.consumer_group, "c19-dead", {light.stream: ">"}, count=20
        )
        stolen = len(reply[0][1])
        async with mq, mq.worker(**FAST) as worker:
            end = anyio.current_time() + seconds
            await heavy_producer.send(500)
            await wait_until(lambda: len(ledger.events("start")) == 500, within=30,
                             what="500 handlers running")  # fmt: skip
            await light_producer.send(20)  # fetched under that pressure
            light_mids = set(light_producer.confirmed)
            await wait_until(lambda: light_mids <= done_set(ledger), within=max(seconds, 10),
                             what="light messages under pressure")  # fmt: skip
            handled_under_load = [
                e for e in ledger.events("done") if e["mid"] in light_mids and e["t_loop"] < end
            ]
            await wait_until(lambda: len(ledger.events("done")) == 540, within=seconds + 60,
                             what="the heavy handlers finishing")  # fmt: skip
            await wait_until(lambda: settled(raw, heavy), within=30, what="heavy acks")
            await wait_until(lambda: settled(raw, light), within=30, what="light acks")
            assert worker.stats.failed == 0
        assert not errors, errors[:5]
        assert int(await raw.get(counter)) == calls["ok"]
        await assert_settled(raw, heavy, light)
        confirmed = set(heavy_producer.confirmed) | set(light_producer.confirmed)
        rep = check(19, confirmed, ledger)
        report(
            rep,
            seconds=seconds,
            redis_calls=calls["ok"],
            errors=calls["errors"],
            reclaimed=worker.stats.reclaimed,
            light_handled_under_load=len(handled_under_load),
        )
        assert worker.stats.reclaimed >= stolen > 0
        assert len(handled_under_load) == len(light_mids)
        assert not rep.duplicated
    finally:
        await raw.aclose()
        await mq.aclose()


async def test_case19_500_handlers_calling_redis(
    redis_server: RedisServer, prefix: str, ledger: Ledger
) -> None:
    await pool_pressure(redis_server, prefix, ledger, 10.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_case19_500_handlers_calling_redis_for_minutes(
    redis_server: RedisServer, prefix: str, ledger: Ledger
) -> None:
    await pool_pressure(redis_server, prefix, ledger, 180.0)


# -- case 20 -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_case20_idle_queue_for_ten_minutes(
    private_redis: RedisServer, private_raw: aioredis.Redis, prefix: str, ledger: Ledger
) -> None:
    idle = float(os.environ.get("RELIABILITY_IDLE_SECONDS", "600"))
    mq, queue = ledger_client(private_redis.url, prefix, ledger, consumer="c20")
    producer = Producer(queue, "c20")
    async with mq:
        with capture_events() as events:
            async with mq.worker() as worker:  # default settings, as in production
                await producer.send(10)
                await wait_until(lambda: len(done_set(ledger)) == 10, what="warm-up")
                info = await private_raw.info("stats")
                connections_before = int(info["total_connections_received"])
                await anyio.sleep(idle)
                info = await private_raw.info("stats")
                connections_during = int(info["total_connections_received"]) - connections_before
                (mid,) = await producer.send(1)
                with anyio.fail_after(5):  # at once: no dead connection to notice first
                    await wait_until(lambda: mid in done_set(ledger), within=5, what="first")
                await wait_until(lambda: settled(private_raw, queue), what="acks")
            problems = [
                r.msg
                for r in events.records
                if r.levelname in ("WARNING", "ERROR") and r.msg != "shutdown"
            ]
            assert worker.stats.handled == 11
        await assert_settled(private_raw, queue)
        rep = check(20, producer.confirmed, ledger)
        report(rep, idle_seconds=idle, new_connections_while_idle=connections_during)
        assert not problems, problems
        assert connections_during <= 2  # no reconnect storm (the stats client excepted)


# -- case 21 -----------------------------------------------------------------------------

# The commands the library sends (directly or from its scripts), and nothing else.
LIBRARY_COMMANDS = (
    *("ping", "time", "evalsha", "script|load", "type", "exists", "del", "info"),
    *("xadd", "xreadgroup", "xack", "xclaim", "xpending", "xrange", "xlen", "xdel", "xtrim"),
    *("xinfo|groups", "xinfo|consumers", "xinfo|stream", "xgroup|create", "xgroup|delconsumer"),
    *("hsetnx", "hset", "hget", "hdel", "hgetall", "sadd", "srem", "smembers"),
    *("zadd", "zrem", "zcard", "zrange", "zrangebyscore", "zscore"),
    *("subscribe",),  # the worker's cancel listener (issue 16), on ``{prefix}cancel``
)
FORBIDDEN = ("keys", "flushall", "flushdb", "debug", "scan")


async def set_acl_user(admin: aioredis.Redis, user: str, prefix: str) -> None:
    """``user``: only ``prefix*`` keys (the registry included) and channels, and the
    library's commands.

    redis-py sends CLIENT SETINFO on connect (Redis 7.2+; older servers answer "unknown
    subcommand", which redis-py ignores), so it is allowed where it exists.
    """
    rules = ["reset", "on", ">secret", f"~{prefix}*", "resetchannels", f"&{prefix}*", "-@all"]
    rules += [f"+{c}" for c in LIBRARY_COMMANDS]
    try:
        await admin.execute_command("ACL", "SETUSER", user, *rules, "+client|setinfo")
    except aioredis.ResponseError:
        await admin.execute_command("ACL", "SETUSER", user, *rules)


async def whole_app(url: str, prefix: str, ledger: Ledger, tag: str) -> dict[str, Any]:
    """Send, handle, retry, dead-letter, reclaim, expire and trim, as one ACL user."""
    mq = LeanMQ(url, prefix=prefix, consumer_name=f"{tag}-worker")
    queue = mq.queue("orders")
    failed_once: set[str] = set()

    @queue.handler(concurrency=5, visibility_timeout=0.5, max_retries=1, backoff=lambda _: 0.01)
    async def handle(message: Message[dict[str, Any]]) -> None:
        mid = message.data["mid"]
        if mid.endswith("poison"):
            raise Reject("poison")
        if mid.endswith("flaky") and mid not in failed_once:
            failed_once.add(mid)
            raise RuntimeError("first attempt fails")
        ledger.record(mid, "done", app=tag)

    producer = Producer(queue, tag)
    settings = {**FAST, "expire_interval": 0.1, "trim_interval": 0.1, "retention": 0.0}
    async with mq:
        await mq.create_queue_pair("orders")
        # A dead consumer holds some messages: the worker reclaims them after the lease.
        await producer.send(5)
        held: Any = await mq.redis.xreadgroup(
            queue.consumer_group, f"{tag}-dead", {queue.stream: ">"}, count=5
        )
        assert len(held[0][1]) == 5
        await producer.send(20)
        await producer.send(5, ttl=0.05)  # expired before the worker starts
        expired = set(list(producer.confirmed)[-5:])
        await anyio.sleep(0.2)
        await producer.send_one(f"{tag}-poison")
        await producer.send_one(f"{tag}-flaky")
        await producer.send(10, delay=0.1)
        want = set(producer.confirmed) - expired - {f"{tag}-poison"}
        async with mq.worker(**settings) as worker:
            await wait_until(lambda: want <= done_set(ledger), within=30, what=f"{tag} handled")
            await wait_until(lambda: worker.stats.dead_lettered == 1, what=f"{tag} poison")
            await wait_until(lambda: worker.maintenance.trimmed > 0, what=f"{tag} trim")
            await wait_until(lambda: settled(mq.redis, queue), what=f"{tag} acks")
        stats = worker.stats
        dead = await dlq_entries(mq.redis, queue)
        await assert_settled(mq.redis, queue)
    return {
        "want": want,
        "reclaimed": stats.reclaimed,
        "retried": stats.retried,
        "dead": len(dead),
        "expired": stats.expired + worker.maintenance.expired,
        "trimmed": worker.maintenance.trimmed,
        "confirmed": producer.confirmed,
    }


async def test_case21_least_privilege_acl_users_and_two_apps(
    private_redis: RedisServer, private_raw: aioredis.Redis, tmp_path: Path
) -> None:
    admin = private_raw
    for user, prefix in (("app1", "app1:"), ("app2", "app2:")):
        await set_acl_user(admin, user, prefix)
    await admin.execute_command("ACL", "LOG", "RESET")
    await admin.config_resetstat()
    url = f"redis://{{}}:secret@127.0.0.1:{private_redis.port}/0"
    results: dict[str, dict[str, Any]] = {}
    ledgers = {user: Ledger(tmp_path / f"{user}.jsonl") for user in ("app1", "app2")}

    async def run(user: str, prefix: str) -> None:
        results[user] = await whole_app(url.format(user), prefix, ledgers[user], user)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "app1", "app1:")
        tg.start_soon(run, "app2", "app2:")

    denied = await admin.execute_command("ACL", "LOG")
    stats = await commandstats(admin)
    used = sorted(c for c in stats if c not in ("acl|setuser", "acl|log", "config|resetstat"))
    keys = [k.decode() for k in await admin.keys("*")]
    for user, result in results.items():
        rep = check(21, result["want"], ledgers[user])
        report(
            rep,
            app=user,
            reclaimed=result["reclaimed"],
            retried=result["retried"],
            dlq=result["dead"],
            expired=result["expired"],
            trimmed=result["trimmed"],
            acl_denials=len(denied),
        )
        assert result["reclaimed"] >= 5 and result["retried"] >= 1 and result["dead"] == 1
        assert result["expired"] == 5 and result["trimmed"] > 0  # each counted once
        assert not rep.duplicated
    for user, book in ledgers.items():  # each app handled its own messages only
        assert {e["app"] for e in book.events("done")} == {user}
        book.close()
    assert not denied, denied
    assert not [c for c in used if c.split("|")[0] in FORBIDDEN or c.startswith("config")], used
    assert all(k.startswith(("app1:", "app2:")) for k in keys), keys
    print("reliability case 21: commands used:", " ".join(used))  # noqa: T201
