"""Concurrent sends share round trips, and each caller still gets its own id or error (issue 14).

:mod:`leanmq_async.send_coalescer`: a send made while another is in flight goes out
with the next pipeline. Checked on real Redis: every message lands once with its
payload; failures stay per message; cancelling a waiting sender loses or duplicates no
other message; round trips and ``WAIT`` calls are shared; cluster sends group per node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from leanmq_async import (
    ConfigurationError,
    ConnectionSettings,
    LeanMQ,
    MessageTooLargeError,
    RedisOperationError,
    SendNotWrittenError,
    SendOutcomeUnknownError,
)
from leanmq_async.cluster import Durability, NotReplicatedError
from leanmq_async.envelope import decode_entry
from leanmq_async.queue import Queue
from leanmq_async.testing import RedisServer, free_port
from leanmq_async.testing_cluster import RedisCluster
from leanmq_async.webhook import LeanMQWebhook
from tests.cluster_fixtures import small_cluster
from tests.lossy_proxy import LossyProxy

__all__ = ["small_cluster"]  # a fixture, imported for the cluster test

pytestmark = pytest.mark.anyio

SETTINGS = ConnectionSettings(socket_timeout=5, socket_connect_timeout=2, pool_timeout=5)


class Trips:
    """Counts round trips: the packed writes redis-py sends (one per command or pipeline)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = AbstractConnection.send_packed_command

        async def counting(conn: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            await original(conn, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


async def stream_payloads(raw: aioredis.Redis, queue: Queue) -> dict[str, Any]:
    """Stream id -> decoded payload, for every entry of ``queue``."""
    entries: Any = await raw.xrange(queue.stream)
    raw_payload = {sid: decode_entry(fields, 1 << 20).raw_payload for sid, fields in entries}
    return {sid.decode(): msgspec.json.decode(bytes(p)) for sid, p in raw_payload.items()}


async def commandstats(raw: aioredis.Redis) -> dict[str, int]:
    info = await raw.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


async def test_many_concurrent_senders_each_get_their_own_id(
    mq: LeanMQ, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = mq.queue("many")
    await mq.store.load_scripts()
    trips = Trips(monkeypatch)

    async def send(i: int) -> str:
        if i % 3 == 1:
            return await queue.send_message({"i": i}, ttl=600)  # send.lua
        if i % 3 == 2:
            return await queue.send_message({"i": i}, message_id=f"m-{i}")  # deduplicated
        return await queue.send_message({"i": i})  # the fast path: XADD

    ids = await asyncio.gather(*(send(i) for i in range(200)))
    assert trips.count <= 5, trips.count  # 200 sends: the first alone, then few pipelines
    assert len(set(ids)) == 200
    stored = await stream_payloads(raw, queue)
    assert len(stored) == 200  # each exactly once
    assert {sid: stored[sid] for sid in ids} == {sid: {"i": i} for i, sid in enumerate(ids)}


async def test_partitioned_and_webhook_sends_coalesce_too(
    mq: LeanMQ, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = mq.queue("parts", partitions=4)
    webhook = LeanMQWebhook(mq=mq)
    trips = Trips(monkeypatch)

    async def send(i: int) -> str:
        if i % 2:
            return await webhook.send("/hook", {"i": i})
        return await parts.send_message({"i": i}, key=f"k-{i}")

    ids = await asyncio.gather(*(send(i) for i in range(100)))
    assert trips.count <= 10, trips.count  # 100 sends; opening connections included
    stored = {q.name: await stream_payloads(raw, q) for q in parts.partitions}
    for i in range(0, 100, 2):  # ids are per stream: look in the key's partition
        assert stored[parts.partition_for(f"k-{i}").name][ids[i]] == {"i": i}
    assert sum(len(entries) for entries in stored.values()) == 50


async def test_a_flushed_script_is_loaded_again_for_the_whole_batch(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("noscript")
    await queue.send_message("warm-up", ttl=60)
    await raw.script_flush()  # Redis restarted, say: every EVALSHA meets NOSCRIPT
    assert mq.store.coalescer is not None
    lane = mq.store.coalescer.lane(None)
    assert lane.enter()  # a send in flight: all 50 go in one pipeline, and meet NOSCRIPT
    ids: dict[int, str] = {}

    async def send(i: int) -> None:
        ids[i] = await queue.send_message(i, ttl=60)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(send, i)
        await anyio.wait_all_tasks_blocked()
        lane.release()
    stored = await stream_payloads(raw, queue)
    assert {stored[sid]: i for i, sid in ids.items()} == {i: i for i in range(50)}
    assert len(stored) == 51


async def test_a_lone_send_goes_out_at_once_alone(
    mq: LeanMQ, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = mq.queue("lone")
    await queue.send_message(0)  # connect
    trips = Trips(monkeypatch)
    for i in range(5):
        await queue.send_message(i)
    assert trips.count == 5
    lane = mq.store.coalescer.lane(None) if mq.store.coalescer else None
    assert lane is not None and not lane.busy


async def test_failures_stay_with_their_own_caller(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    async with LeanMQ(redis_server.url, prefix=prefix, max_message_size=1000) as mq:
        ok, wrong, bad_expiry = mq.queue("ok"), mq.queue("wrong"), mq.queue("bad-exp")
        await raw.set(wrong.stream, "not a stream")  # every write to it: WRONGTYPE
        await raw.set(bad_expiry.keys.expiry, "not a zset")  # send.lua refuses TTL sends
        first = await ok.send_message({"first": True}, message_id="dup")
        await mq.store.load_scripts()
        hits = mq.store.dedup_hits
        sends = {
            "ok-1": ok.send_message({"n": 1}),
            "wrong-xadd": wrong.send_message({"n": 2}),
            "ok-ttl": ok.send_message({"n": 3}, ttl=60),
            "wrong-ttl": wrong.send_message({"n": 4}, ttl=60),
            "exp-xadd": bad_expiry.send_message({"n": 5}),  # plain XADD: the zset is not used
            "exp-ttl": bad_expiry.send_message({"n": 6}, ttl=60),
            "dup": ok.send_message({"again": True}, message_id="dup"),
            "ok-2": ok.send_message({"n": 7}),
        }
        results = dict(
            zip(sends, await asyncio.gather(*sends.values(), return_exceptions=True), strict=True)
        )
        with pytest.raises(MessageTooLargeError):  # refused before it could join a batch
            await ok.send_message("x" * 2000)
        assert mq.store.dedup_hits == hits + 1
    for name in ("wrong-xadd", "wrong-ttl", "exp-ttl"):
        error = results[name]
        assert isinstance(error, RedisOperationError), (name, error)
        assert "WRONGTYPE" in str(error)
    assert results["dup"] == first  # the first send's id, nothing written
    stored = await stream_payloads(raw, ok)
    assert [stored[str(results[n])] for n in ("ok-1", "ok-ttl", "ok-2")] == [
        {"n": 1},
        {"n": 3},
        {"n": 7},
    ]
    assert len(stored) == 4  # the first "dup" and the three others
    assert list((await stream_payloads(raw, bad_expiry)).values()) == [{"n": 5}]


async def test_a_sender_cancelled_in_line_is_not_written_and_others_are(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    queue = mq.queue("cancel-waiting")
    await queue.send_message("warm-up")
    assert mq.store.coalescer is not None
    lane = mq.store.coalescer.lane(None)
    assert lane.enter()  # as a send in flight would: the sends below wait in line
    results: dict[int, str] = {}
    scopes = {i: anyio.CancelScope() for i in range(10)}

    async def send(i: int) -> None:
        with scopes[i]:
            results[i] = await queue.send_message(i)

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(send, i)
        await anyio.wait_all_tasks_blocked()  # every sender is in line
        for i in (0, 4, 9):  # the first, one in the middle, the last
            scopes[i].cancel()
        await anyio.wait_all_tasks_blocked()
        lane.release()  # the flight lands: the line goes out
    assert sorted(results) == [1, 2, 3, 5, 6, 7, 8]
    stored = await stream_payloads(raw, queue)
    assert sorted(v for v in stored.values() if v != "warm-up") == [1, 2, 3, 5, 6, 7, 8]
    assert {stored[sid] for sid in results.values()} == set(results)
    assert not lane.busy


async def test_a_cancelled_first_sender_does_not_strand_the_others(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    # WAIT for a replica that does not exist: every flight lasts timeout_ms.
    slow = Durability(replicas=1, timeout_ms=300)
    async with LeanMQ(redis_server.url, prefix=prefix, durability=slow) as mq:
        queue = mq.queue("cancel-first")
        await mq.health()
        await mq.store.load_scripts()
        outcomes: dict[int, Any] = {}
        first = anyio.CancelScope()

        async def send(i: int) -> None:
            try:
                outcomes[i] = await queue.send_message(i, ttl=60 if i % 2 else None)
            except NotReplicatedError as exc:
                outcomes[i] = exc

        async def send_first() -> None:
            with first:
                await queue.send_message("first")

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_first)
            await anyio.wait_all_tasks_blocked()  # in flight, alone
            for i in range(20):
                tg.start_soon(send, i)
            await anyio.wait_all_tasks_blocked()
            first.cancel()  # the first flight is cancelled: the line must still go out
    assert first.cancelled_caught
    assert sorted(outcomes) == list(range(20))
    ids: dict[str, int] = {}
    for i, outcome in outcomes.items():
        assert isinstance(outcome, NotReplicatedError), outcome  # written, not replicated
        (sid,) = outcome.stream_ids
        ids[sid] = i
    stored = await stream_payloads(raw, queue)
    assert {sid: stored[sid] for sid in ids} == ids  # each its own message, once
    assert sorted(v for v in stored.values() if isinstance(v, int)) == list(range(20))


async def test_a_sender_cancelled_while_its_batch_is_in_flight_affects_no_other(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    slow = Durability(replicas=1, timeout_ms=300)  # no replica: every flight lasts 300 ms
    async with LeanMQ(redis_server.url, prefix=prefix, durability=slow) as mq:
        queue = mq.queue("cancel-in-flight")
        await mq.health()
        assert mq.store.coalescer is not None
        lane = mq.store.coalescer.lane(slow)
        outcomes: dict[int, Any] = {}
        scopes = {i: anyio.CancelScope() for i in range(10)}

        async def send(i: int) -> None:
            with scopes[i]:
                try:
                    outcomes[i] = await queue.send_message(i)
                except NotReplicatedError as exc:
                    outcomes[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(send, i)
            await anyio.wait_all_tasks_blocked()  # 0 in flight alone, 1-9 in line
            with anyio.fail_after(5):
                while lane._line:  # noqa: ASYNC110 - taken: the batch of 1-9 is in flight
                    await anyio.sleep(0.01)
            scopes[4].cancel()
    assert scopes[4].cancelled_caught
    assert sorted(outcomes) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    stored = await stream_payloads(raw, queue)
    for i, outcome in outcomes.items():
        assert isinstance(outcome, NotReplicatedError)
        assert [stored[sid] for sid in outcome.stream_ids] == [i]
    # The cancelled sender's message left with its batch: written, like a cancelled send.
    assert sorted(stored.values()) == list(range(10))


async def test_a_broken_pipeline_is_outcome_unknown_for_every_send_in_it(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    # Every XADD: the proxy lets Redis run it, then cuts the connection.
    xadd = {b"XADD"}.__contains__
    async with LossyProxy(redis_server.port, drop=1.0, after_reply=1.0, when=xadd) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        async with LeanMQ(url, prefix=prefix, connection=SETTINGS) as mq:
            await mq.health()
            queue = mq.queue("lossy")
            results = await asyncio.gather(
                *(queue.send_message(i) for i in range(20)), return_exceptions=True
            )
    assert all(isinstance(r, SendOutcomeUnknownError) for r in results), results
    assert 1 <= await raw.xlen(queue.stream) < 20  # some ran: unknown was the honest answer


async def test_an_unreachable_server_is_not_written_for_every_send(prefix: str) -> None:
    async with LeanMQ(f"redis://127.0.0.1:{free_port()}", prefix=prefix, connection=SETTINGS) as mq:
        queue = mq.queue("refused")
        results = await asyncio.gather(
            *(queue.send_message(i, message_id=f"r-{i}" if i % 2 else None) for i in range(20)),
            return_exceptions=True,
        )
    assert all(isinstance(r, SendNotWrittenError) for r in results), results


# -- durability: one WAIT per pipeline -----------------------------------------------------


@pytest.fixture(scope="module")
def replicated() -> Iterator[RedisServer]:
    """A primary with one replica, for WAIT (module-scoped: two small processes)."""
    with RedisServer() as primary:
        args = ["--replicaof", "127.0.0.1", str(primary.port)]
        with RedisServer(args=args) as replica:
            client = redis.Redis(port=primary.port, socket_timeout=5)
            deadline = time.monotonic() + 20
            while client.info("replication").get("slave0", {}).get("state") != "online":
                assert time.monotonic() < deadline, "the replica did not connect"
                time.sleep(0.05)
            replica_info = redis.Redis(port=replica.port, socket_timeout=5).info("replication")
            assert replica_info["role"] == "slave"
            yield primary


@pytest.fixture
async def replicated_raw(replicated: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(replicated.url)
    yield client
    await client.aclose()


async def test_one_wait_covers_a_whole_pipeline(
    replicated: RedisServer, prefix: str, replicated_raw: aioredis.Redis
) -> None:
    durable = Durability(replicas=1, timeout_ms=2000)
    async with LeanMQ(replicated.url, prefix=prefix, durability=durable) as mq:
        queue = mq.queue("durable")
        await queue.send_message("warm-up", ttl=60)
        before = await commandstats(replicated_raw)
        ids = await asyncio.gather(
            *(queue.send_message(i, ttl=60 if i % 2 else None) for i in range(100))
        )
        after = await commandstats(replicated_raw)
    waits = after["wait"] - before.get("wait", 0)
    assert 1 <= waits <= 5, waits  # not one per send
    assert after["evalsha"] - before["evalsha"] == 50  # the TTL half: send.lua
    assert after["xadd"] - before["xadd"] == 100  # (a script's XADD is counted too)
    stored = await stream_payloads(replicated_raw, queue)
    assert {sid: stored[sid] for sid in ids} == {sid: i for i, sid in enumerate(ids)}


async def test_each_durability_has_its_own_lane(
    replicated: RedisServer, prefix: str, replicated_raw: aioredis.Redis
) -> None:
    # A send without durability does not wait behind another's WAIT, nor pay for one.
    async with LeanMQ(replicated.url, prefix=prefix) as mq:
        queue = mq.queue("lanes")
        slow = Durability(replicas=2, timeout_ms=1000)  # one replica only: waits 1 s

        async def send_slow() -> None:
            with pytest.raises(NotReplicatedError):
                await queue.send_message("slow", durability=slow)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_slow)
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(0.9):
                quick = await asyncio.gather(*(queue.send_message(i) for i in range(10)))
        stored = await stream_payloads(replicated_raw, queue)
    assert [stored[sid] for sid in quick] == list(range(10))


# -- cluster: one pipeline per node ----------------------------------------------------------


async def test_cluster_sends_to_queues_on_every_node_all_land(
    small_cluster: RedisCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LeanMQ(small_cluster.url, prefix=prefix) as mq:
        queues = [mq.queue(f"node-{i}") for i in range(30)]  # spread over the 3 primaries
        await mq.store.load_scripts()
        await queues[0].send_message("warm-up")
        trips = Trips(monkeypatch)

        async def send(i: int) -> str:
            queue = queues[i % 30]
            return await queue.send_message({"i": i}, ttl=60 if i % 2 else None)

        ids = await asyncio.gather(*(send(i) for i in range(300)))
        assert trips.count < 60, trips.count  # per node pipelines, not 300 round trips
        for k, queue in enumerate(queues):
            got = {m.id: m.data for m in await queue.peek_messages(100)}
            if k == 0:
                got = {sid: data for sid, data in got.items() if data != "warm-up"}
            mine = {ids[i]: {"i": i} for i in range(k, 300, 30)}
            assert got == mine
        # An atomic bulk send across slots is still refused, before anything is written.
        slots = {mq.redis.keyslot(q.stream) for q in queues[:2]}  # type: ignore[union-attr]
        if len(slots) == 2:
            with pytest.raises(ConfigurationError, match="slot"):
                async with mq.transaction() as tx:
                    tx.send_message(queues[0], 1)
                    tx.send_message(queues[1], 2)
