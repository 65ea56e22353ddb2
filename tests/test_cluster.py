"""Redis Cluster: the queue API, the worker and failover on a real local cluster.

One session-scoped cluster (3 primaries, 3 replicas, private loopback ports) serves every
test; each test has its own key prefix. The failover tests kill a primary and come last;
they put the killed node back (as a replica) before they start if an earlier one left it
dead. Without ``redis-cli --cluster`` the cluster tests are skipped (the URL tests run).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from leanmq_async import (
    ConfigurationError,
    ConnectionSettings,
    LeanMQ,
    LeanMQConnectionError,
    Message,
)
from leanmq_async.cluster import (
    Durability,
    LeanMQRedisCluster,
    NotReplicatedError,
    parse_cluster_url,
    parse_sentinel_url,
    sentinel_url,
)
from leanmq_async.testing_cluster import RedisCluster, cluster_support
from tests.worker_apps.common import app_env, log_tail, start_app, wait_until

log = logging.getLogger(__name__)

FAST = {"block_ms": 200, "maintenance_interval": 0.05, "grace_period": 5.0}


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """3 primaries + 3 replicas, started once (about 7 s), torn down at the end."""
    reason = cluster_support()
    if reason is not None:
        pytest.skip(f"no local Redis Cluster can be built: {reason}")
    with RedisCluster(primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
async def cmq(redis_cluster: RedisCluster, prefix: str) -> AsyncIterator[LeanMQ]:
    async with LeanMQ(redis_cluster.url, prefix=prefix) as client:
        yield client


def node_client(port: int) -> redis.Redis:
    """A plain client of one node (no redirects): to see where a key lives."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def replica_ids(port: int, stream: str) -> list[str]:
    """The ids of ``stream`` as the replica on ``port`` has them now (READONLY read)."""
    with redis.Redis(port=port, socket_timeout=5, single_connection_client=True) as node:
        node.execute_command("READONLY")  # a replica answers MOVED without it
        return [sid.decode() for sid, _ in node.xrange(stream)]


def server_version(cluster: RedisCluster) -> tuple[int, ...]:
    with redis.Redis(port=cluster.nodes[0].port, socket_timeout=5) as node:
        text = node.info("server")["redis_version"]
    return tuple(int(x) for x in text.split(".")[:2])


def same_slot_name(name: str) -> str:
    """Another queue name whose keys hash to the same slot as ``name``'s."""
    slot = key_slot(name.encode())
    for i in range(1_000_000):
        other = f"q{i}"
        if key_slot(other.encode()) == slot:
            return other
    raise AssertionError("no name found")  # pragma: no cover


# -- URLs (no cluster needed) ------------------------------------------------------------


def test_cluster_url_lists_every_node_with_credentials() -> None:
    address = parse_cluster_url("rediss+cluster://user:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002/0")
    assert address.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert (address.username, address.password, address.ssl) == ("user", "p@ss", True)
    assert parse_cluster_url("redis://h:1").nodes == [("h", 1)]  # for cluster=True


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://h:7000/1",  # a cluster has database 0 only
        "redis+cluster://h:7000?decode_responses=true",
        "redis+cluster://h:notaport",
        "redis+cluster://",
        "redis+sentinel://h:1",  # no service name
        "redis+sentinel://h:1/svc/x",
        "redis+sentinel://h:1/svc?socket_timeout=1",
        "unix+cluster:///tmp/sock",
    ],
)
def test_bad_cluster_and_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        if "sentinel" in url:
            parse_sentinel_url(url)
        else:
            LeanMQ(url)


def test_sentinel_url_round_trips_the_keywords() -> None:
    url = sentinel_url([("a", 26379), ("b", 26380)], "my master", 2, "u", "p w", ssl=True)
    address = parse_sentinel_url(url)
    assert address.sentinels == [("a", 26379), ("b", 26380)]
    assert (address.service_name, address.db, address.ssl) == ("my master", 2, True)
    assert (address.username, address.password) == ("u", "p w")
    with_auth = parse_sentinel_url("redis+sentinel://s1/m?sentinel_password=x")
    assert with_auth.sentinels == [("s1", 26379)] and with_auth.sentinel_password == "x"


def test_cluster_client_keeps_the_deliberate_settings() -> None:
    mq = LeanMQ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", prefix="x:")
    client = mq.redis
    assert isinstance(client, LeanMQRedisCluster)
    assert client.retry.get_retries() == 0  # no command retries after connection errors
    kwargs = client.connection_kwargs
    assert kwargs["decode_responses"] is False
    assert kwargs["socket_timeout"] == mq.connection_settings.socket_timeout
    assert client.reinitialize_steps == 0  # a MOVED never closes every connection
    assert mq.store.cluster
    assert LeanMQ("redis://127.0.0.1:7000", cluster=True).store.cluster


def test_durability_settings_are_checked() -> None:
    for bad in ({"replicas": 0}, {"timeout_ms": 0}, {"replicas": True}):
        with pytest.raises(ConfigurationError):
            Durability(**bad)
    assert Durability(replicas=0, aof=True).replicas == 0  # the local AOF fsync only
    with pytest.raises(ConfigurationError, match="socket timeout"):
        LeanMQ("redis://127.0.0.1:1", durability=Durability(timeout_ms=60_000))


# -- the queue API on a cluster ----------------------------------------------------------


@pytest.mark.anyio
async def test_send_get_ack_on_queues_in_different_slots(
    redis_cluster: RedisCluster, cmq: LeanMQ
) -> None:
    orders, _ = await cmq.create_queue_pair("orders")
    billing, _ = await cmq.create_queue_pair("billing")
    owners = {redis_cluster.primary_for(q.stream).port for q in (orders, billing)}
    assert len(owners) == 2  # two shards: nothing here depends on one node
    for queue in (orders, billing):
        sent = [await queue.send_message({"n": i}) for i in range(3)]
        sent += await queue.send_messages([{"n": 3}, {"n": 4}])
        got = await queue.get_messages(count=10)
        assert [m.id for m in got] == sent
        assert [m.data for m in got] == [{"n": i} for i in range(5)]
        assert await queue.acknowledge_messages([m.id for m in got[:3]]) == 3
        assert await queue.delete_messages([m.id for m in got[3:]]) == 2  # one MULTI, one slot
        info = await queue.get_info()
        assert (info.message_count, info.pending_messages) == (3, 0)
        # Every key of the queue lives on the node serving its slot.
        with node_client(redis_cluster.primary_for(queue.stream).port) as node:
            assert node.exists(queue.stream, queue.keys.meta) == 2


def _getkeys_calls(cluster: RedisCluster) -> int:
    total = 0
    for _, port in cluster.startup_nodes:
        with node_client(port) as node:
            stats = node.info("commandstats")
            total += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
    return total


@pytest.mark.anyio
async def test_reads_route_without_asking_a_node_for_their_keys(
    redis_cluster: RedisCluster, cmq: LeanMQ
) -> None:
    # redis-py sends COMMAND GETKEYS before each XREADGROUP (its keys move); a worker
    # reading in a loop would pay a round trip more per read.
    queue, _ = await cmq.create_queue_pair("getkeys")
    await queue.send_messages(list(range(20)))
    before = _getkeys_calls(redis_cluster)
    for _ in range(5):
        got = await queue.get_messages(count=4)
        assert len(got) == 4
        await queue.acknowledge_messages([m.id for m in got])
    handled: list[int] = []

    @queue.handler
    async def handle(n: int) -> None:
        handled.append(n)

    await queue.send_messages(list(range(10)))
    with anyio.fail_after(30):
        await cmq.run_worker(burst=True, block_ms=50)
    assert sorted(handled) == list(range(10))
    assert _getkeys_calls(redis_cluster) == before


@pytest.mark.anyio
async def test_move_to_dlq_and_requeue(cmq: LeanMQ) -> None:
    queue, dlq = await cmq.create_queue_pair("jobs")
    ids = await queue.send_messages(["a", "b", "c"])
    got = await queue.get_messages(count=3)
    assert (await queue.move_to_dlq([got[0].id, got[2].id], "bad input")).count == 2
    dead = await dlq.get_messages(count=10)
    assert [m.data for m in dead] == ["a", "c"]
    assert {m.dead_letter.reason for m in dead if m.dead_letter} == {"bad input"}
    assert await dlq.requeue_messages([m.id for m in dead]) == 2
    again = await queue.get_messages(count=10)
    assert [m.data for m in again] == ["a", "c"]
    assert (await dlq.get_info()).message_count == 0
    assert ids[1] == got[1].id


@pytest.mark.anyio
async def test_scripts_are_loaded_again_after_a_script_flush(cmq: LeanMQ) -> None:
    queue, _ = await cmq.create_queue_pair("flushed")
    await queue.send_message("warm", ttl=60)  # the send script runs on the queue's node
    assert await cmq.redis.script_flush()  # on every primary
    await queue.send_message("again", ttl=60, delay=0.01)  # NOSCRIPT -> SCRIPT LOAD -> run
    await wait_until(lambda: _move_due(cmq, queue), what="delayed message moved")
    assert [m.data for m in await queue.get_messages(count=5)] == ["warm", "again"]


async def _move_due(mq: LeanMQ, queue: Any) -> bool:
    moved, _ = await mq.store.move_due(queue.keys)
    return moved == 1


@pytest.mark.anyio
async def test_ttl_expiry(cmq: LeanMQ) -> None:
    queue, dlq = await cmq.create_queue_pair("ttl")
    await queue.send_message("short", ttl=0.05)
    await queue.send_message("long", ttl=60)
    await wait_until(lambda: _now_past(cmq, 100), what="short TTL passed")
    assert [m.data for m in await queue.get_messages(count=10)] == ["long"]

    await queue.send_message("expires unread", ttl=0.05)
    await wait_until(lambda: _now_past(cmq, 100), what="TTL passed")
    # Both expired entries leave the stream; only the unread one is dead-lettered (the
    # first was skipped, and acknowledged, by the read above).
    assert await cmq.process_expired_messages(policy="dlq") == 2
    (dead,) = await dlq.get_messages(count=10)
    assert dead.data == "expires unread"
    assert dead.dead_letter is not None and dead.dead_letter.reason == "expired"


_marks: dict[int, float] = {}


async def _now_past(mq: LeanMQ, ms: float) -> bool:
    """True once ``ms`` of Redis time passed since the first call for this client."""
    now = await mq.store.redis_now_ms(max_age=0)
    start = _marks.setdefault(id(mq), now)
    if now - start >= ms:
        del _marks[id(mq)]
        return True
    return False


@pytest.mark.anyio
async def test_list_queues_across_slots(redis_cluster: RedisCluster, cmq: LeanMQ) -> None:
    names = [f"list-{i}" for i in range(8)]
    for i, name in enumerate(names):
        queue, _ = await cmq.create_queue_pair(name)
        await queue.send_messages(list(range(i)))
    owners = {redis_cluster.primary_for(cmq.queue(n).stream).port for n in names}
    assert len(owners) == 3  # spread over every shard
    infos = {q.name: q for q in await cmq.list_queues()}
    assert set(infos) == {n for name in names for n in (name, f"{name}:dlq")}
    assert [infos[n].message_count for n in names] == list(range(8))


@pytest.mark.anyio
async def test_cross_slot_transaction_fails_before_writing_anything(cmq: LeanMQ) -> None:
    a, _ = await cmq.create_queue_pair("alpha")
    b, _ = await cmq.create_queue_pair("beta")
    assert key_slot(b"alpha") != key_slot(b"beta")
    with pytest.raises(ConfigurationError, match="one hash slot"):
        async with cmq.transaction() as tx:
            tx.send_message(a, "first")
            tx.send_message(b, "second")  # refused here, before the commit
    assert (await a.get_info()).message_count == 0
    assert (await b.get_info()).message_count == 0

    # Queues that share a slot (by chance of their names) are one atomic unit.
    c, _ = await cmq.create_queue_pair(same_slot_name("alpha"))
    async with cmq.transaction() as tx:
        tx.send_message(a, "one", ttl=60)
        tx.send_message(c, "two", delay=0.01)
        tx.send_message(a, "three")
    assert len(tx.stream_ids) == 3
    assert (await a.get_info()).message_count == 2
    assert (await c.get_info()).delayed_messages == 1


@pytest.mark.anyio
async def test_borrowed_cluster_client(redis_cluster: RedisCluster, prefix: str) -> None:
    nodes = [ClusterNode(h, p) for h, p in redis_cluster.startup_nodes]
    decoding = AsyncRedisCluster(startup_nodes=nodes, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode"):
        LeanMQ(client=decoding, prefix=prefix)
    await decoding.aclose()

    mine = AsyncRedisCluster(startup_nodes=nodes)
    async with LeanMQ(client=mine, prefix=prefix) as mq:
        queue, _ = await mq.create_queue_pair("borrowed")
        await queue.send_message("hi")
        assert [m.data for m in await queue.get_messages()] == ["hi"]
    assert await mine.ping()  # still open: it is the caller's
    await mine.aclose()


@pytest.mark.anyio
async def test_busy_client_waits_for_a_connection_instead_of_failing(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    """redis-py's cluster pools raise MaxConnectionsError when full; LeanMQ's client
    waits its turn (up to pool_timeout), like its single-node pool."""
    settings = ConnectionSettings(max_connections=2, pool_timeout=30)
    async with LeanMQ(redis_cluster.url, prefix=prefix, connection=settings) as mq:
        queue, _ = await mq.create_queue_pair("busy")
        async with anyio.create_task_group() as tg:
            for _ in range(3):  # blocking reads hold connections for a while
                tg.start_soon(partial(queue.get_messages, 50, block_for_seconds=0.2))
            for i in range(40):
                tg.start_soon(queue.send_message, i)
        info = await queue.get_info()
        assert info.message_count == 40


# -- a new client's first commands, concurrently ---------------------------------------


@pytest.mark.anyio
async def test_new_clients_first_sends_may_run_concurrently(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    """50 sends to 50 slots as a new client's very first commands: none may fail (redis-py
    8.1 routed them before it knew the layout, and the MOVED replies made it close the
    connections of the others), and each goes straight to its slot's primary."""
    names = [f"race-{i}" for i in range(50)]
    owners = redis_cluster.slot_owners()
    assert len({owners[key_slot(name.encode())] for name in names}) == 3  # every primary
    for attempt in range(3):
        async with LeanMQ(redis_cluster.url, prefix=f"{prefix}{attempt}:") as mq:
            queues = [mq.queue(name) for name in names]
            results = await asyncio.gather(
                *(q.send_message(q.name) for q in queues), return_exceptions=True
            )
            assert [r for r in results if isinstance(r, BaseException)] == []
            assert isinstance(mq.redis, LeanMQRedisCluster)
            assert mq.redis.reinitialize_counter == 0  # no MOVED: routed right the first time
            for queue, sid in zip(queues, results, strict=True):
                assert [(m.id, m.data) for m in await queue.peek_messages(5)] == [(sid, queue.name)]


@pytest.mark.anyio
async def test_new_clients_first_reads_may_run_concurrently(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    names = [f"race-{i}" for i in range(50)]
    async with LeanMQ(redis_cluster.url, prefix=prefix) as setup:
        for name in names:
            queue, _ = await setup.create_queue_pair(name)
            await queue.send_message(name)
    for attempt in range(3):
        consumer = f"reader-{attempt}"
        async with LeanMQ(redis_cluster.url, prefix=prefix, consumer_name=consumer) as mq:
            queues = [mq.queue(name) for name in names]
            results = await asyncio.gather(
                *(q.get_messages(count=5) for q in queues), return_exceptions=True
            )
            assert [r for r in results if isinstance(r, BaseException)] == []
            assert isinstance(mq.redis, LeanMQRedisCluster)
            assert mq.redis.reinitialize_counter == 0
            expected = [[name] for name in names] if attempt == 0 else [[] for _ in names]
            assert [[m.data for m in got] for got in results] == expected
            # The first reader got every message: it holds them, the others got none.
            for queue in queues:
                assert (await queue.get_info()).pending_messages == 1


# -- durability --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_wait_for_replicas_confirms_or_reports_what_was_written(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    durable = Durability(replicas=1, timeout_ms=300)
    async with LeanMQ(redis_cluster.url, prefix=prefix, durability=durable) as mq:
        queue, _ = await mq.create_queue_pair("durable")
        confirmed = await queue.send_message("confirmed")
        primary = redis_cluster.primary_for(queue.stream)
        (replica,) = redis_cluster.replicas_of(primary)
        assert replica.process is not None
        # A stopped replica acknowledges nothing: WAIT must count on the connection that
        # wrote (on another one it would count the replica's old acknowledgements).
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicatedError) as plain:
                await queue.send_message("unconfirmed")
            with pytest.raises(NotReplicatedError) as scripted:
                async with mq.transaction() as tx:
                    tx.send_message(queue, "tx-1", ttl=60)
                    tx.send_message(queue, "tx-2")
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        assert plain.value.acknowledged == 0 and len(plain.value.stream_ids) == 1
        assert len(scripted.value.stream_ids) == 2 and tx.stream_ids == scripted.value.stream_ids
        # Written to the primary all the same: the producer knows what may be lost.
        ids = [confirmed, *plain.value.stream_ids, *scripted.value.stream_ids]
        assert [m.id for m in await queue.peek_messages(10)] == ids
        await wait_until(lambda: _sends_confirmed(queue), within=10, what="replica back")


async def _sends_confirmed(queue: Any) -> bool:
    try:
        await queue.send_message("after")
    except NotReplicatedError:
        return False
    return True


@pytest.mark.anyio
async def test_waitaof_needs_redis_7_2(redis_cluster: RedisCluster, prefix: str) -> None:
    version = redis.Redis(port=redis_cluster.nodes[0].port).info("server")["redis_version"]
    if tuple(int(x) for x in version.split(".")[:2]) >= (7, 2):
        pytest.skip("this server has WAITAOF")
    aof = Durability(replicas=1, aof=True)
    async with LeanMQ(redis_cluster.url, prefix=prefix, durability=aof) as mq:
        queue, _ = await mq.create_queue_pair("aof")
        with pytest.raises(ConfigurationError, match="WAITAOF"):
            await queue.send_message("x")
        assert (await queue.get_info()).message_count == 0  # refused before writing


@pytest.mark.anyio
async def test_per_call_durability_on_a_client_without_default(
    redis_cluster: RedisCluster, cmq: LeanMQ
) -> None:
    queue, _ = await cmq.create_queue_pair("per-call")
    durable = Durability(replicas=1, timeout_ms=1000)
    first = await queue.send_message("one", durability=durable)
    batch = await queue.send_messages(["two", "three"], ttl=60, durability=durable)
    (replica,) = redis_cluster.replicas_of(redis_cluster.primary_for(queue.stream))
    # Confirmed by the replica: it has the entries as soon as the calls returned.
    assert replica_ids(replica.port, queue.stream) == [first, *batch]
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        plain = await queue.send_message("plain")  # no durability here: no wait
        with pytest.raises(NotReplicatedError) as waited:
            await queue.send_message("waited", durability=Durability(replicas=1, timeout_ms=200))
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert waited.value.acknowledged == 0
    ids = [first, *batch, plain, *waited.value.stream_ids]
    assert [m.id for m in await queue.peek_messages(10)] == ids
    await wait_until(
        lambda: replica_ids(replica.port, queue.stream) == ids, within=10, what="replica back"
    )


@pytest.mark.anyio
async def test_per_call_durability_reports_what_was_written(
    redis_cluster: RedisCluster, cmq: LeanMQ, prefix: str
) -> None:
    """Asking for 2 replicas where each shard has 1: written, 1 acknowledged, reported."""
    queue, _ = await cmq.create_queue_pair("two-replicas")
    two = Durability(replicas=2, timeout_ms=200)
    with pytest.raises(NotReplicatedError) as single:
        await queue.send_message("one", durability=two)
    with pytest.raises(NotReplicatedError) as batch:
        await queue.send_messages(["two", "three"], delay=60, durability=two)
    for exc, n in ((single.value, 1), (batch.value, 2)):
        assert exc.acknowledged == 1 and len(exc.stream_ids) == n
        text = str(exc)
        assert f"written {n} message(s) ({', '.join(exc.stream_ids)}) to the primary" in text
        assert "only 1 replica(s) acknowledged within 200 ms (wanted 2)" in text
    assert [m.id for m in await queue.peek_messages(10)] == single.value.stream_ids
    assert (await queue.get_info()).delayed_messages == 2  # the batch, as scheduled

    # A per-call Durability replaces the client's default for that call.
    one = Durability(replicas=1, timeout_ms=1000)
    async with LeanMQ(redis_cluster.url, prefix=prefix, durability=one) as durable_mq:
        other = durable_mq.queue("two-replicas")
        await other.send_message("default")  # one replica: confirmed
        with pytest.raises(NotReplicatedError, match="wanted 2"):
            await other.send_message("asked for two", durability=two)
    assert [m.data for m in await queue.peek_messages(10)][1:] == ["default", "asked for two"]


@pytest.mark.anyio
async def test_per_call_waitaof_needs_redis_7_2(redis_cluster: RedisCluster, cmq: LeanMQ) -> None:
    if server_version(redis_cluster) >= (7, 2):
        pytest.skip("this server has WAITAOF")
    queue, _ = await cmq.create_queue_pair("aof-per-call")
    aof = Durability(replicas=1, aof=True)
    with pytest.raises(ConfigurationError, match=r"WAITAOF \(Redis >= 7.2\)"):
        await queue.send_message("plain", durability=aof)
    with pytest.raises(ConfigurationError, match="nothing was written"):
        await queue.send_message("scripted", ttl=60, durability=aof)
    with pytest.raises(ConfigurationError, match="WAITAOF"):
        await queue.send_messages(["a", "b"], delay=60, durability=aof)
    info = await queue.get_info()
    assert (info.message_count, info.delayed_messages) == (0, 0)
    assert await queue.peek_messages(10) == []


# -- the worker --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_worker_retries_then_dead_letters(cmq: LeanMQ) -> None:
    queue, dlq = await cmq.create_queue_pair("flaky")
    attempts: Counter[str] = Counter()
    done: list[str] = []

    @queue.handler(concurrency=4, max_retries=2, backoff=lambda n: 0.0)
    async def handle(message: Message[str]) -> None:
        attempts[message.data] += 1
        if message.data.startswith("bad") or attempts[message.data] < 2:
            raise ValueError(f"cannot handle {message.data}")
        done.append(message.data)

    await queue.send_messages(["ok-1", "bad-1", "ok-2"])
    async with cmq.worker(**FAST) as worker:
        await wait_until(lambda: _dlq_length(dlq, 1), within=20, what="dead-lettered")
        await wait_until(lambda: sorted(done) == ["ok-1", "ok-2"], what="retried ones")
    assert attempts == {"ok-1": 2, "ok-2": 2, "bad-1": 3}
    (dead,) = await dlq.get_messages()
    assert dead.data == "bad-1" and dead.dead_letter is not None
    assert dead.dead_letter.attempts == 3 and dead.dead_letter.error_type == "ValueError"
    assert (worker.stats.retried, worker.stats.dead_lettered) == (4, 1)  # 1 + 1 + 2


async def _dlq_length(dlq: Any, n: int) -> bool:
    return bool((await dlq.get_info()).message_count == n)


@pytest.mark.anyio
async def test_sigkilled_workers_lease_is_reclaimed(
    redis_cluster: RedisCluster, cmq: LeanMQ, prefix: str, tmp_path: Path
) -> None:
    queue, _ = await cmq.create_queue_pair("work")
    ledger = f"{prefix}ledger"
    total = 30
    await queue.send_messages(list(range(total)))
    env = app_env(
        redis_cluster.url,
        prefix,
        APP_CONSUMER="worker-a",
        APP_LEDGER=ledger,
        APP_CONCURRENCY=5,
        APP_LEASE=1.0,
        APP_SLEEP=0.3,
    )
    out = tmp_path / "worker-a.log"
    proc = start_app("slow_ledger", env, out)
    try:
        await wait_until(
            lambda: _llen_at_least(cmq, ledger, 5), within=30, what="worker A under way"
        )
        proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(proc.wait)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log_tail(out)
    held = {
        c["name"].decode(): int(c["pending"])
        for c in await cmq.store.consumers(queue.stream, queue.consumer_group)
    }
    in_flight = held.get("worker-a", 0)
    assert in_flight >= 1, held

    async with LeanMQ(redis_cluster.url, prefix=prefix, consumer_name="worker-b") as other:

        @other.queue("work").handler(concurrency=10, visibility_timeout=1.0)
        async def handle(message: Message[int]) -> None:
            await other.redis.rpush(ledger, message.data)

        async with other.worker(**FAST) as worker_b:
            await wait_until(
                lambda: _ledger_complete(cmq, ledger, total), within=30, what="every message"
            )
            await wait_until(lambda: _settled(queue), what="acks")
    done = Counter(int(x) for x in await cmq.redis.lrange(ledger, 0, -1))
    assert set(done) == set(range(total))
    assert sum(done.values()) - total <= in_flight
    assert worker_b.stats.reclaimed == in_flight


async def _llen_at_least(mq: LeanMQ, key: str, n: int) -> bool:
    return int(await mq.redis.llen(key)) >= n


async def _ledger_complete(mq: LeanMQ, key: str, total: int) -> bool:
    return {int(x) for x in await mq.redis.lrange(key, 0, -1)} == set(range(total))


async def _settled(queue: Any) -> bool:
    info = await queue.get_info()
    return bool(info.pending_messages == 0)


# -- failover ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_moved_redirects_are_followed_after_a_manual_failover(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    """A graceful CLUSTER FAILOVER moves the slot: the next commands are answered MOVED
    by the old primary and followed (no error), also for a durable send (WAIT)."""
    durable = Durability(replicas=1, timeout_ms=1000)
    async with (
        LeanMQ(redis_cluster.url, prefix=prefix) as mq,
        LeanMQ(redis_cluster.url, prefix=prefix, durability=durable) as durable_mq,
    ):
        queue, _ = await mq.create_queue_pair("moving")
        first = await queue.send_message("before")
        await durable_mq.queue("moving").send_message("durable before")
        old = redis_cluster.primary_for(queue.stream)
        (replica,) = redis_cluster.replicas_of(old)
        await anyio.to_thread.run_sync(redis_cluster.failover, replica)
        assert redis_cluster.primary_for(queue.stream).port == replica.port
        second = await queue.send_message("after")  # MOVED, followed
        await durable_mq.queue("moving").send_message("durable after")  # pinned: re-routed
        got = await queue.get_messages(count=10)
        assert [m.data for m in got] == ["before", "durable before", "after", "durable after"]
        assert {first, second} <= {m.id for m in got}


@pytest.mark.anyio
@pytest.mark.parametrize("coalesce", [False, True], ids=["alone", "coalesced"])
async def test_concurrent_sends_follow_moved_without_breaking_each_other(
    redis_cluster: RedisCluster, prefix: str, coalesce: bool
) -> None:
    """After a failover every command to a moved slot meets MOVED. redis-py 8.1 closed
    every connection on each fifth one (its reinitialize_steps), failing the commands
    other tasks had in flight; LeanMQ's client updates the slot and carries on.
    Coalesced (issue 14), the sends meet MOVED inside per-node pipelines instead."""
    async with LeanMQ(redis_cluster.url, prefix=prefix, coalesce_sends=coalesce) as mq:
        queues = [mq.queue(f"moved-{i}") for i in range(60)]
        for queue in queues:  # one by one: the client learns the layout
            await queue.send_message("before")
        owners = redis_cluster.slot_owners()
        old = redis_cluster.node(owners[key_slot(queues[0].stream.encode())])
        moving = [q for q in queues if owners[key_slot(q.stream.encode())] == old.port]
        assert len(moving) >= 10
        (replica,) = redis_cluster.replicas_of(old)
        await anyio.to_thread.run_sync(redis_cluster.failover, replica)
        results = await asyncio.gather(
            *(q.send_message("after") for q in queues), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert isinstance(mq.redis, LeanMQRedisCluster)
        if not coalesce:
            assert mq.redis.reinitialize_counter >= 5  # the MOVED replies did come
        for queue in queues:
            assert [m.data for m in await queue.peek_messages(5)] == ["before", "after"]


def _heal(cluster: RedisCluster) -> None:
    """Start nodes an earlier failover test killed (they rejoin as replicas)."""
    dead = [n for n in cluster.nodes if not n.running]
    for node in dead:
        node.start()
    if dead:
        cluster.wait_stable(60)


async def _failover_under_load(
    cluster: RedisCluster,
    prefix: str,
    record_property: Any,
    *,
    warm_up: int,
    after: int,
) -> None:
    """Produce (waiting for 1 replica) and consume while the queue's primary is killed.

    Every send confirmed by WAIT must be handled; sends that failed (not confirmed, or
    outcome unknown) may be lost and are counted. With one replica per shard, sends are
    unconfirmed from the failover until the killed node is back as the new replica.
    """
    _heal(cluster)
    handled: Counter[int] = Counter()
    confirmed: set[int] = set()
    unconfirmed: set[int] = set()  # written, fewer replicas than asked
    unknown: set[int] = set()  # the connection broke: written or not
    failed_over = anyio.Event()
    durable = Durability(replicas=1, timeout_ms=1000)
    async with (
        LeanMQ(cluster.url, prefix=prefix, durability=durable) as producer,
        LeanMQ(cluster.url, prefix=prefix, consumer_name="survivor") as consumer,
    ):
        queue = consumer.queue("orders")
        out = producer.queue("orders")

        @queue.handler(concurrency=20, visibility_timeout=2.0)
        async def handle(n: int) -> None:
            handled[n] += 1

        async def produce() -> None:
            i = sent_after = 0
            while sent_after < after:
                try:
                    await out.send_message(i)
                except NotReplicatedError:
                    unconfirmed.add(i)
                except LeanMQConnectionError:
                    unknown.add(i)
                    await anyio.sleep(0.02)
                else:
                    confirmed.add(i)
                    sent_after += failed_over.is_set()
                i += 1

        await producer.create_queue_pair("orders")
        with anyio.fail_after(90):
            async with consumer.worker(**FAST) as worker:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(produce)  # stops after `after` sends past the failover
                    await wait_until(lambda: len(handled) >= warm_up, within=30, what="warm-up")
                    killed, promoted = await anyio.to_thread.run_sync(
                        cluster.kill_primary_of, queue.stream
                    )
                    failed_over.set()
                    # The promoted replica has no replica of its own: until the killed
                    # node rejoins as one, no send can be confirmed. Started from this
                    # (the main) thread: a server dies with the thread that started it.
                    killed.start()
                    await anyio.to_thread.run_sync(cluster.wait_stable, 60)
                await wait_until(
                    lambda: confirmed <= set(handled), within=60, what="confirmed handled"
                )
    lost_confirmed = confirmed - set(handled)
    lost_other = (unconfirmed | unknown) - set(handled)
    report = {
        "confirmed": len(confirmed),
        "unconfirmed": len(unconfirmed),
        "unknown": len(unknown),
        "lost_confirmed": len(lost_confirmed),
        "lost_unconfirmed_or_unknown": len(lost_other),
        "handled_twice": sum(1 for c in handled.values() if c > 1),
        "killed": killed.port,
        "promoted": promoted.port,
        "reclaimed": worker.stats.reclaimed,
    }
    for key, value in report.items():
        record_property(key, value)
    log.warning("failover report: %s", report)
    assert not lost_confirmed, report
    assert len(confirmed) > warm_up + after // 2


@pytest.mark.anyio
async def test_failover_under_load_loses_no_confirmed_message(
    redis_cluster: RedisCluster, prefix: str, record_property: Any
) -> None:
    await _failover_under_load(redis_cluster, prefix, record_property, warm_up=200, after=200)


@pytest.mark.slow
@pytest.mark.anyio
async def test_failover_under_heavier_load(
    redis_cluster: RedisCluster, prefix: str, record_property: Any
) -> None:
    await _failover_under_load(redis_cluster, prefix, record_property, warm_up=2000, after=3000)
