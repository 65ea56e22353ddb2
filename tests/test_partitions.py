"""Partitioned queues: routing, order within a partition, the worker, info, on a single
node and on a real 3-primary cluster."""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from typing import Any

import anyio
import pytest
import redis
from redis.crc import key_slot

from leanmq_async import (
    ConfigurationError,
    LeanMQ,
    LeanMQError,
    Message,
    MessageEncodeError,
    PartialSendError,
    PartitionedQueue,
    RedisOperationError,
)
from leanmq_async.cluster import Durability, LeanMQRedisCluster, NotReplicatedError
from leanmq_async.partition import partition_index
from leanmq_async.testing_cluster import RedisCluster
from tests.cluster_fixtures import scmq, small_cluster
from tests.worker_apps.common import wait_until

__all__ = ["scmq", "small_cluster"]  # fixtures, imported for pytest

pytestmark = pytest.mark.anyio

FAST = {"block_ms": 100, "maintenance_interval": 0.05, "grace_period": 5.0}


# -- declaring (no I/O) -------------------------------------------------------------------


def test_partitioned_queue_is_cached_and_its_size_fixed() -> None:
    mq = LeanMQ("redis://127.0.0.1:1/0", prefix="p:")
    orders = mq.queue("orders", partitions=4)
    assert isinstance(orders, PartitionedQueue)
    assert mq.queue("orders", partitions=4) is orders
    assert [q.name for q in orders.partitions] == [f"orders#{i}" for i in range(4)]
    assert orders.partitions[2] is mq.queue("orders#2")  # each one is a plain queue
    assert orders.dead_letter_queues()[0].name == "orders#0:dlq"
    with pytest.raises(ConfigurationError, match="partitions=4"):
        mq.queue("orders", partitions=5)
    with pytest.raises(ConfigurationError, match="partitions=4"):
        mq.queue("orders")
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ConfigurationError):
            mq.queue("other", partitions=bad)  # type: ignore[call-overload]


def test_key_routing_is_crc32_modulo_n() -> None:
    mq = LeanMQ("redis://127.0.0.1:1/0", prefix="p:")
    orders = mq.queue("orders", partitions=5)
    for key in ("customer-1", "customer-2", "ü", ""):
        expected = zlib.crc32(key.encode()) % 5
        assert partition_index(key, 5) == expected
        assert orders.partition_for(key) is orders.partitions[expected]
        assert orders.partition_for(key.encode()) is orders.partitions[expected]
    # A fixed value: the mapping must not change between processes or releases.
    assert zlib.crc32(b"customer-42") == 1241360405
    assert partition_index("customer-42", 5) == 0


def test_handler_goes_on_every_partition_or_none() -> None:
    mq = LeanMQ("redis://127.0.0.1:1/0", prefix="p:")
    orders = mq.queue("orders", partitions=3)

    @orders.handler(concurrency=7, max_retries=1)
    async def handle(data: Any) -> None: ...

    assert [h.queue.name for h in mq.handlers] == ["orders#0", "orders#1", "orders#2"]
    assert {h.options.concurrency for h in mq.handlers} == {7}
    with pytest.raises(ConfigurationError, match="already has a handler"):
        orders.handler(handle)
    with pytest.raises(ConfigurationError, match="unknown handler option"):
        orders.handler(group="other", nope=1)(handle)
    orders.partitions[2].handler(group="audit")(handle)
    with pytest.raises(ConfigurationError, match="'orders#2'"):
        orders.handler(group="audit")(handle)  # refused before any partition got it
    assert len(mq.handlers) == 4
    orders.handler(group="billing")(handle)  # fan-out: a second group on every partition
    assert len(mq.handlers) == 7


# -- one node ------------------------------------------------------------------------------


async def test_same_key_same_partition_in_order(mq: LeanMQ) -> None:
    orders = mq.queue("orders", partitions=4)
    await orders.create()
    keys = [f"customer-{i}" for i in range(8)]
    sent: dict[str, list[int]] = defaultdict(list)
    for n in range(40):
        key = keys[n % len(keys)]
        await orders.send_message({"key": key, "n": n}, key=key)
        sent[key].append(n)
    batch_keys = [keys[n % 3] for n in range(40, 70)]
    ids = await orders.send_messages(
        [{"key": k, "n": n} for n, k in zip(range(40, 70), batch_keys, strict=True)],
        keys=batch_keys,
    )
    assert len(ids) == 30 and all(ids)
    for n, k in zip(range(40, 70), batch_keys, strict=True):
        sent[k].append(n)
    await orders.send_messages([{"key": "solo", "n": n} for n in range(5)], key="solo")
    sent["solo"] = list(range(5))

    seen: dict[str, list[int]] = defaultdict(list)
    for part in orders.partitions:
        for message in await part.peek_messages(1000):
            key = message.data["key"]
            assert orders.partition_for(key) is part  # same key -> its one partition
            seen[key].append(message.data["n"])
    assert seen == sent  # and in the order sent
    assert (await orders.get_info()).message_count == 75


async def test_round_robin_spreads_evenly(mq: LeanMQ) -> None:
    orders = mq.queue("spread", partitions=4)
    for i in range(8):
        await orders.send_message(i)
    ids = await orders.send_messages(list(range(8, 20)))
    assert len(ids) == 12
    counts = [(await p.get_info()).message_count for p in orders.partitions]
    assert counts == [5, 5, 5, 5]
    assert await orders.purge() == 20


async def test_send_messages_rejects_bad_arguments(mq: LeanMQ) -> None:
    orders = mq.queue("args", partitions=2)
    with pytest.raises(ConfigurationError):
        await orders.send_messages("abc")
    with pytest.raises(ConfigurationError, match="one per item"):
        await orders.send_messages([1, 2], keys=["a"])
    with pytest.raises(ConfigurationError, match="either key"):
        await orders.send_messages([1], key="a", keys=["a"])
    assert await orders.send_messages([]) == []
    assert (await orders.get_info()).message_count == 0


async def test_a_failed_partition_raises_partial_send_error_with_the_ids_written(
    mq: LeanMQ,
) -> None:
    orders = mq.queue("partial", partitions=3)
    broken = orders.partitions[1]
    await mq.redis.set(broken.stream, "not a stream")
    with pytest.raises(PartialSendError) as caught:
        await orders.send_messages(list(range(6)), ttl=60)  # round-robin: 0,1,2,0,1,2
    error = caught.value
    assert isinstance(error, LeanMQError)
    assert set(error.errors) == {broken.name}
    assert isinstance(error.errors[broken.name], RedisOperationError)
    assert error.unsent == [1, 4]
    ids = error.stream_ids
    assert ids[1] is None and ids[4] is None
    for part, positions in ((orders.partitions[0], (0, 3)), (orders.partitions[2], (2, 5))):
        written = await part.peek_messages()
        assert [m.id for m in written] == [ids[p] for p in positions]
        assert [m.data for m in written] == list(positions)
    # One partition is written whole or not at all: its own error, nothing written.
    assert orders.partition_for("g") is broken
    with pytest.raises(RedisOperationError, match="WRONGTYPE"):
        await orders.send_messages([7, 8], key="g")


async def test_a_payload_the_codec_refuses_stops_a_partitioned_send_before_any_write(
    mq: LeanMQ,
) -> None:
    orders = mq.queue("encode-first", partitions=2)
    with pytest.raises(MessageEncodeError):
        await orders.send_messages([1, 2, object()])
    assert (await orders.get_info()).message_count == 0


async def test_worker_handles_every_partition_and_dead_letters_per_partition(
    mq: LeanMQ,
) -> None:
    orders = mq.queue("work", partitions=3)
    handled: Counter[int] = Counter()

    @orders.handler(concurrency=5, max_retries=0)
    async def handle(message: Message[int]) -> None:
        if message.data % 10 == 0:
            raise ValueError(f"no {message.data}")
        handled[message.data] += 1

    await orders.send_messages(list(range(60)))
    await orders.send_messages([100, 110, 120], keys=["a", "b", "c"])
    failing = [n for n in [*range(60), 100, 110, 120] if n % 10 == 0]
    with anyio.fail_after(30):
        await mq.run_worker(burst=True, **FAST)
    assert handled == Counter(n for n in range(60) if n % 10)  # each one once
    dead: dict[str, list[int]] = {}
    for part, dlq in zip(orders.partitions, orders.dead_letter_queues(), strict=True):
        messages = await dlq.peek_messages(100)
        dead[part.name] = [m.data for m in messages]
        for m in messages:
            assert m.dead_letter is not None and m.dead_letter.source_queue == part.name
    assert sorted(n for ns in dead.values() for n in ns) == sorted(failing)
    assert sum(1 for ns in dead.values() if ns) == 3  # failures landed in every partition
    for key, n in (("a", 100), ("b", 110), ("c", 120)):
        assert n in dead[orders.partition_for(key).name]
    info = await orders.get_info()
    assert (info.message_count, info.pending_messages) == (63, 0)


async def test_a_backlog_on_one_partition_does_not_hold_back_another(mq: LeanMQ) -> None:
    # Fair scheduling: each partition has its own fetch loop and its own share of the
    # worker's capacity, so messages on a quiet partition are handled while a busy one
    # still has hundreds waiting (not after them, as in one shared FIFO).
    orders = mq.queue("fair", partitions=2)
    busy_key = next(
        k for k in (f"k{i}" for i in range(100)) if orders.partition_for(k).name.endswith("#0")
    )
    quiet_key = next(
        k for k in (f"k{i}" for i in range(100)) if orders.partition_for(k).name.endswith("#1")
    )
    handled: list[str] = []

    @orders.handler(concurrency=2)
    async def handle(data: str) -> None:
        handled.append(data)
        await anyio.sleep(0.002)

    await orders.send_messages(["busy"] * 300, key=busy_key)
    await orders.send_messages(["quiet"] * 10, key=quiet_key)
    with anyio.fail_after(60):
        await mq.run_worker(burst=True, **FAST)
    assert handled.count("busy") == 300 and handled.count("quiet") == 10
    last_quiet = max(i for i, d in enumerate(handled) if d == "quiet")
    assert handled[:last_quiet].count("busy") < 100


async def test_get_info_sums_the_partitions(mq: LeanMQ) -> None:
    orders = mq.queue("info", partitions=3)
    pairs = await orders.create()
    assert [q.name for q, _ in pairs] == ["info#0", "info#1", "info#2"]
    await orders.send_messages(list(range(6)))  # 2 per partition
    await orders.send_message("later", delay=60)
    await orders.send_message("later", key="k", delay=60)
    part = orders.partitions[0]
    assert len(await part.get_messages(count=2)) == 2  # pending on one partition
    info = await orders.get_info()
    assert info.name == "info" and not info.is_dlq
    assert (info.message_count, info.pending_messages, info.delayed_messages) == (6, 2, 2)
    assert info.consumer_group is None  # each partition has its own default group
    assert "info#1-group" in info.consumer_groups
    assert info.created_at is not None
    per = await orders.partition_infos()
    assert [i.name for i in per] == ["info#0", "info#1", "info#2"]
    assert sum(i.message_count for i in per) == 6
    listed = {i.name for i in await mq.list_queues()}
    assert {"info#0", "info#0:dlq", "info#2:dlq"} <= listed


# -- a real cluster ------------------------------------------------------------------------


def _slot_owners(cluster: RedisCluster) -> dict[int, str]:
    """Slot -> node id of its primary, from CLUSTER SHARDS."""
    node = redis.Redis(port=cluster.nodes[0].port, socket_timeout=5)
    try:
        shards = node.execute_command("CLUSTER", "SHARDS")
    finally:
        node.close()
    owners: dict[int, str] = {}
    for shard in shards:
        shard = _as_dict(shard)
        primary = next(_as_dict(n) for n in shard[b"nodes"] if _as_dict(n)[b"role"] == b"master")
        slots = [int(s) for s in shard[b"slots"]]
        for start, end in zip(slots[::2], slots[1::2], strict=True):
            for slot in range(start, end + 1):
                owners[slot] = primary[b"id"].decode()
    return owners


def _as_dict(reply: Any) -> dict[bytes, Any]:
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


async def test_partitions_land_on_several_primaries(
    small_cluster: RedisCluster, scmq: LeanMQ
) -> None:
    orders = scmq.queue("orders", partitions=6)
    owners = _slot_owners(small_cluster)
    slots = [key_slot(p.stream.encode()) for p in orders.partitions]
    node = redis.Redis(port=small_cluster.nodes[0].port, socket_timeout=5)
    try:
        for part, slot in zip(orders.partitions, slots, strict=True):
            assert node.cluster("KEYSLOT", part.stream) == slot
            assert key_slot(part.keys.dlq.encode()) == slot  # a partition stays in one slot
    finally:
        node.close()
    primaries = {owners[s] for s in slots}
    assert len(primaries) > 1
    await orders.create()
    await orders.send_messages(list(range(60)))
    for part, slot in zip(orders.partitions, slots, strict=True):
        port = small_cluster.slot_owners()[slot]
        plain = redis.Redis(port=port, socket_timeout=5)
        try:
            assert plain.xlen(part.stream) == 10  # stored on its slot's primary
        finally:
            plain.close()


async def test_worker_consumes_every_partition_on_a_cluster(scmq: LeanMQ) -> None:
    orders = scmq.queue("work", partitions=6)
    handled: Counter[int] = Counter()

    @orders.handler(concurrency=10, max_retries=0)
    async def handle(message: Message[int]) -> None:
        if message.data < 0:
            raise ValueError("negative")
        handled[message.data] += 1

    await orders.create()
    await orders.send_messages(list(range(300)))
    await orders.send_messages([-1, -2], keys=["x", "y"])
    async with scmq.worker(**FAST):
        await wait_until(lambda: sum(handled.values()) == 300, within=20, what="all handled")
        await wait_until(lambda: _dead(orders, 2), within=20, what="dead-lettered")
    assert handled == Counter(range(300))
    info = await orders.get_info()
    assert (info.message_count, info.pending_messages) == (302, 0)
    for key, n in (("x", -1), ("y", -2)):
        dlq = orders.partition_for(key).dead_letter_queue()
        assert n in [m.data for m in await dlq.peek_messages(10)]


async def _dead(orders: PartitionedQueue, n: int) -> bool:
    total = 0
    for dlq in orders.dead_letter_queues():
        total += (await dlq.get_info()).message_count
    return total == n


async def test_a_new_clients_first_fan_out_needs_no_warm_up(
    small_cluster: RedisCluster, prefix: str
) -> None:
    """create() and send_messages() on 6 partitions as a new client's first commands
    (run concurrently, one per partition): each goes straight to its slot's primary."""
    for attempt in range(3):
        async with LeanMQ(small_cluster.url, prefix=f"{prefix}{attempt}:") as mq:
            orders = mq.queue("fan-out", partitions=6)
            ids = await orders.send_messages(list(range(60)))
            assert isinstance(mq.redis, LeanMQRedisCluster)
            assert mq.redis.reinitialize_counter == 0  # no MOVED: no command misrouted
        async with LeanMQ(small_cluster.url, prefix=f"{prefix}{attempt}:") as mq:
            assert len(await mq.queue("fan-out", partitions=6).create()) == 6
            assert isinstance(mq.redis, LeanMQRedisCluster)
            assert mq.redis.reinitialize_counter == 0
            orders = mq.queue("fan-out", partitions=6)
            for i, part in enumerate(orders.partitions):  # round-robin: item n in n % 6
                stored = [(m.id, m.data) for m in await part.peek_messages(100)]
                assert stored == [(ids[n], n) for n in range(i, 60, 6)]


async def test_per_call_durability_on_partitions(small_cluster: RedisCluster, scmq: LeanMQ) -> None:
    """The small cluster has no replica: a send that waits for one is written, then
    reported unconfirmed; a batch over every partition reports once, with every id."""
    orders = scmq.queue("durable", partitions=6)
    await orders.create()
    one = Durability(replicas=1, timeout_ms=50)
    part = orders.partition_for("k")
    plain = await orders.send_message("plain", key="k")  # no default: no wait
    with pytest.raises(NotReplicatedError) as single:
        await orders.send_message("waited", key="k", durability=one)
    assert single.value.acknowledged == 0
    assert [m.id for m in await part.peek_messages(10)] == [plain, *single.value.stream_ids]

    with pytest.raises(NotReplicatedError) as batch:
        await orders.send_messages(list(range(12)), durability=one)  # round-robin: 6 groups
    exc = batch.value
    assert "6 of the 6 partitions written (durable#0, durable#1," in str(exc)
    assert exc.acknowledged == 0 and len(exc.stream_ids) == 12
    # Every message was written; its id (in item order) is the one in its partition.
    for i, part in enumerate(orders.partitions):  # round-robin: item n in n % 6
        stored = [(m.id, m.data) for m in await part.peek_messages(100) if m.data in range(12)]
        assert stored == [(exc.stream_ids[n], n) for n in (i, i + 6)]

    with pytest.raises(NotReplicatedError, match="1 of the 1 partitions"):
        await orders.send_messages(["a", "b"], key="k", durability=one)
    assert (await orders.get_info()).message_count == 2 + 12 + 2


async def test_per_call_waitaof_on_partitions_writes_nothing(
    small_cluster: RedisCluster, scmq: LeanMQ
) -> None:
    node = redis.Redis(port=small_cluster.nodes[0].port, socket_timeout=5)
    try:
        version = str(node.info("server")["redis_version"])
    finally:
        node.close()
    if tuple(int(x) for x in version.split(".")[:2]) >= (7, 2):
        pytest.skip("this server has WAITAOF")
    orders = scmq.queue("aof", partitions=6)
    await orders.create()
    aof = Durability(replicas=0, aof=True)
    with pytest.raises(ConfigurationError, match="WAITAOF"):
        await orders.send_message("one", durability=aof)
    # One clear error, not one per partition in an exception group.
    with pytest.raises(ConfigurationError, match="nothing was written"):
        await orders.send_messages(list(range(12)), ttl=60, durability=aof)
    assert (await orders.get_info()).message_count == 0
