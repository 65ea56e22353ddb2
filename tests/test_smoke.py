from __future__ import annotations

import pytest

from leanmq_async import LeanMQ

pytestmark = pytest.mark.anyio


async def test_send_get_ack_roundtrip(mq: LeanMQ) -> None:
    queue, dlq = await mq.create_queue_pair("orders")
    sid = await queue.send_message({"order_id": 1})
    ids = await queue.send_messages([{"n": i} for i in range(3)], ttl=60)
    assert len(ids) == 3
    msgs = await queue.get_messages(count=10)
    assert [m.data for m in msgs] == [{"order_id": 1}, {"n": 0}, {"n": 1}, {"n": 2}]
    assert msgs[0].id == sid
    assert msgs[1].expires_at is not None
    assert await queue.acknowledge_messages([m.id for m in msgs[:2]]) == 2
    assert (await queue.move_to_dlq([msgs[2].id], "bad", dlq)).moved == [msgs[2].id]
    info = await queue.get_info()
    assert info.pending_messages == 1
    dead = await dlq.get_messages(count=5)
    assert dead[0].data == {"n": 1}
    assert dead[0].dead_letter is not None and dead[0].dead_letter.reason == "bad"
    assert await dlq.requeue_messages([dead[0].id], queue) == 1
    again = await queue.get_messages(count=5)
    assert [m.data for m in again] == [{"n": 1}]
    async with mq.transaction() as tx:
        tx.send_message(queue, {"tx": 1})
        tx.send_message(queue, {"tx": 2}, ttl=5, delay=1)
    assert len(tx.stream_ids) == 2
    qs = await mq.list_queues()
    assert {q.name for q in qs} == {"orders", "orders:dlq"}
    assert await mq.delete_queue("orders")
