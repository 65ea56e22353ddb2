"""Idempotent sends and honest send errors on Redis Cluster (issue 17): the dedup records
live in each queue's hash slot, so every send path keeps working across slots."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from leanmq_async import ConnectionSettings, LeanMQ, SendNotWrittenError
from leanmq_async.testing import free_port
from leanmq_async.testing_cluster import RedisCluster
from tests.cluster_fixtures import scmq, small_cluster

__all__ = ["scmq", "small_cluster"]  # fixtures, imported for pytest

pytestmark = pytest.mark.anyio


def count_keys(cluster: RedisCluster, pattern: str) -> int:
    total = 0
    for node in cluster.nodes:
        with redis.Redis(port=node.port, socket_timeout=5) as client:
            total += sum(1 for _ in client.scan_iter(match=pattern))
    return total


async def test_dedup_on_a_cluster(small_cluster: RedisCluster, scmq: LeanMQ) -> None:
    a, b = scmq.queue("c-a"), scmq.queue("c-b")
    assert key_slot(a.stream.encode()) != key_slot(b.stream.encode())
    assert (
        key_slot(a.keys.dedup.encode())
        == key_slot(a.keys.dedup_until.encode())
        == key_slot(a.stream.encode())
    )
    first = await a.send_message(1, message_id="m")
    assert await a.send_message(1, message_id="m") == first
    await b.send_message(1, message_id="m")  # another queue, another slot: written
    assert (await b.get_info()).message_count == 1
    ids = await a.send_messages([1, 2, 3], message_ids=["m", "n", "n"])
    assert ids[0] == first and ids[1] == ids[2]
    async with scmq.transaction() as tx:
        tx.send_message(a, 1, "n")
        tx.send_message(a, 2, "o", delay=30)
    assert tx.stream_ids[0] == ids[1]
    assert (await a.get_info()).message_count == 2
    assert (await a.get_info()).delayed_messages == 1
    # Partitions land in different slots; each id keeps to its partition.
    parts = scmq.queue("c-parts", partitions=3)
    mids = [f"p-{i}" for i in range(9)]
    sent = await parts.send_messages(list(range(9)), message_ids=mids)
    assert await parts.send_messages(list(range(9)), message_ids=mids) == sent
    for i, mid in enumerate(mids):
        assert await parts.send_message(i, message_id=mid) == sent[i]
    assert (await parts.get_info()).message_count == 9
    # delete_queue removes the records.
    prefix = scmq.prefix
    assert count_keys(small_cluster, f"{prefix}{{c-a}}:dedup*") == 2
    assert await scmq.delete_queue("c-a")
    assert count_keys(small_cluster, f"{prefix}{{c-a}}*") == 0
    hits = scmq.store.dedup_hits
    await a.send_message(1, message_id="m")
    assert scmq.store.dedup_hits == hits
    assert (await a.get_info()).message_count == 1


async def test_an_unreachable_cluster_is_not_written(prefix: str) -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    settings = ConnectionSettings(socket_connect_timeout=1)
    async with LeanMQ(url, prefix=prefix, connection=settings) as mq:
        with pytest.raises(SendNotWrittenError, match="nothing was written"):
            await mq.queue("nowhere").send_message(1, message_id="x")
