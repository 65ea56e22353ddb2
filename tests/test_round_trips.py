"""Round trips of the hot calls, as the store docstrings state them.

Measured on a private redis-server (7.0) with ``INFO commandstats`` deltas (commands run
inside a script are counted there too, so a script's inner commands are listed) and,
for the number of network round trips, by counting the packed writes redis-py sends
(one per command, one per pipeline). Measured numbers:

    send_message (no ttl/delay)     1 round trip: XADD 1
    send_message(ttl=...)           1 round trip: EVALSHA 1 (inside: TYPE 4, TIME 1, XADD 1, ZADD 1)
    200 concurrent send_message     2 round trips: XADD 200 (the first alone, the 199 sent
                                    while it was in flight in one pipeline; issue 14)
    send_messages(100 items)        1 round trip: EVALSHA 1 (inside: TYPE 4, TIME 1, XADD 100)
    transaction (2 queues, 10 sends) 1 round trip: EVALSHA 1 (inside: TYPE 8, TIME 1, XADD 10)
    get_messages(count=100)         1 round trip: EVALSHA 1 (MOVE_DUE; inside: TYPE 4, TIME 1,
                                    ZRANGEBYSCORE 1, ZRANGE 1) and XREADGROUP 1, pipelined
                                    (+ SCRIPT LOAD 1 and TIME 1 on the client's first read
                                    only: the Redis clock offset is re-measured once a
                                    minute at most). A blocking read that finds nothing
                                    first reads without blocking, to learn when the next
                                    delayed message is due, then blocks until then.
    move_to_dlq(100 ids)            1 round trip: EVALSHA 1 (inside: TYPE 2, TIME 1, XRANGE 100,
                                    XPENDING 100, XADD 100, XACK 100)
    dlq.requeue_messages(100 ids)   1 round trip: EVALSHA 1 (inside: TYPE 4, XRANGE 100, XADD 100,
                                    XACK 100, XDEL 100)
    acknowledge_messages(100 ids)   1 round trip: XACK 1
    delete_messages(100 ids)        1 round trip: MULTI, XACK, XDEL, ZREM, EXEC
    get_info                        1 round trip: XLEN, XINFO GROUPS, HGETALL, ZCARD, and
                                    XLEN, XINFO GROUPS, ZCARD of each of 2 priority levels
    list_queues (3 pairs)           2 round trips: SMEMBERS, then 6 x (XLEN, XINFO, HGETALL,
                                    ZCARD) and 3 x 2 priority levels' (XLEN, XINFO, ZCARD)
    worker, messages one at a time  the acks of handled messages ride with the next XREADGROUP
                                    (one pipeline); the acker sends only those that finish
                                    while a read is blocked
    worker, queue without priorities  XREADGROUP as above, never XREAD or claim.lua; one
                                    EXISTS (are priority levels in use?) per LEVEL_CHECK
                                    from the fetcher and the upkeep each
    worker, queue with priorities   one EVALSHA of claim.lua per read, the acks of handled
                                    messages in the same write (no SCRIPT EXISTS before it)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from leanmq_async import LeanMQ, Queue
from leanmq_async.priority import LEVEL_CHECK
from leanmq_async.testing import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def private_server() -> Iterator[RedisServer]:
    """A server for this module alone, so no other client moves the counters."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def admin(private_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def pmq(private_server: RedisServer, prefix: str) -> AsyncIterator[LeanMQ]:
    async with LeanMQ(private_server.url, prefix=prefix) as client:
        await client.health()  # open the connection (HELLO, CLIENT SETINFO) beforehand
        yield client


class Meter:
    """Counts round trips (packed writes) and the server's per-command calls in a block."""

    def __init__(self, admin: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.admin = admin
        self.trips = 0
        original = AbstractConnection.send_packed_command

        async def counting(conn: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            self.trips += 1
            await original(conn, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    async def _stats(self) -> dict[str, int]:
        info = await self.admin.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    async def measure(self, call: Callable[[], Awaitable[Any]]) -> tuple[int, dict[str, int]]:
        """Run ``call``; return ``(round trips, {command: calls})`` it caused."""
        before = await self._stats()
        self.trips = 0  # the admin client's INFO calls fall outside this window
        await call()
        trips = self.trips
        after = await self._stats()
        delta = {k: v - before.get(k, 0) for k, v in after.items()}
        delta["info"] -= 1  # our own INFO
        return trips, {k: v for k, v in delta.items() if v}


@pytest.fixture
def meter(admin: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> Meter:
    return Meter(admin, monkeypatch)


@pytest.fixture
async def queue(pmq: LeanMQ) -> Queue:
    queue, _ = await pmq.create_queue_pair("rt")
    # Load the scripts once: the first EVALSHA of a script costs a SCRIPT LOAD.
    await queue.send_messages([0], ttl=60)
    (msg,) = await queue.get_messages()
    await queue.move_to_dlq([msg.id], "warm-up")
    dlq = queue.dead_letter_queue()
    await dlq.requeue_messages([m.id for m in await dlq.get_messages()])
    await queue.purge()
    return queue


async def test_send_message_is_one_xadd(meter: Meter, queue: Queue) -> None:
    trips, calls = await meter.measure(lambda: queue.send_message({"n": 1}))
    assert trips == 1
    assert calls == {"xadd": 1}


async def test_send_message_with_ttl_is_one_script(meter: Meter, queue: Queue) -> None:
    trips, calls = await meter.measure(lambda: queue.send_message({"n": 1}, ttl=60))
    assert trips == 1
    assert calls == {"evalsha": 1, "type": 4, "time": 1, "xadd": 1, "zadd": 1}


async def test_send_messages_100_is_one_evalsha(meter: Meter, queue: Queue) -> None:
    trips, calls = await meter.measure(lambda: queue.send_messages(range(100)))
    assert trips == 1
    assert calls["evalsha"] == 1
    assert calls["xadd"] == 100  # all inside the script
    assert set(calls) == {"evalsha", "type", "time", "xadd"}
    assert (await queue.get_info()).message_count == 100


async def test_transaction_is_one_evalsha(meter: Meter, pmq: LeanMQ, queue: Queue) -> None:
    other, _ = await pmq.create_queue_pair("rt-other")

    async def run() -> None:
        async with pmq.transaction() as tx:
            for i in range(10):
                tx.send_message(queue if i % 2 else other, i)

    trips, calls = await meter.measure(run)
    assert trips == 1
    assert calls == {"evalsha": 1, "type": 8, "time": 1, "xadd": 10}


async def test_get_messages_100_is_one_xreadgroup(
    meter: Meter, private_server: RedisServer, prefix: str
) -> None:
    async with LeanMQ(private_server.url, prefix=prefix) as fresh:
        queue, _ = await fresh.create_queue_pair("rt-read")
        await queue.send_messages(range(200))
        # Each read first moves due delayed messages (MOVE_DUE, pipelined with the read).
        move_due = {"evalsha": 1, "type": 4, "time": 1, "zrangebyscore": 1, "zrange": 1}
        # A new client loads MOVE_DUE and measures the Redis clock on its first read.
        trips, calls = await meter.measure(lambda: queue.get_messages(count=100))
        assert (trips, calls) == (3, {**move_due, "xreadgroup": 1, "time": 2, "script|load": 1})
        trips, calls = await meter.measure(lambda: queue.get_messages(count=100))
        assert (trips, calls) == (1, {**move_due, "xreadgroup": 1})
        trips, calls = await meter.measure(lambda: queue.get_messages(count=100))
        assert (trips, calls) == (1, {**move_due, "xreadgroup": 1})  # nothing left: still one


async def test_move_to_dlq_100_is_one_evalsha(meter: Meter, queue: Queue) -> None:
    await queue.send_messages(range(100))
    ids = [m.id for m in await queue.get_messages(count=100)]
    trips, calls = await meter.measure(lambda: queue.move_to_dlq(ids, "bulk"))
    assert trips == 1
    assert calls["evalsha"] == 1
    assert calls == {
        "evalsha": 1,
        "type": 2,
        "time": 1,
        "xrange": 100,
        "xpending": 100,
        "xadd": 100,
        "xack": 100,
    }


async def test_requeue_100_is_one_evalsha(meter: Meter, queue: Queue) -> None:
    dlq = queue.dead_letter_queue()
    await queue.send_messages(range(100))
    await queue.move_to_dlq([m.id for m in await queue.get_messages(count=100)], "bulk")
    ids = [m.id for m in await dlq.get_messages(count=100)]
    trips, calls = await meter.measure(lambda: dlq.requeue_messages(ids))
    assert trips == 1
    assert calls == {
        "evalsha": 1,
        "type": 4,  # the DLQ, the stream, and the two priority levels' streams
        "xrange": 100,
        "xadd": 100,
        "xack": 100,
        "xdel": 100,
    }


async def test_settling_is_one_round_trip(meter: Meter, queue: Queue) -> None:
    await queue.send_messages(range(200))
    msgs = await queue.get_messages(count=200)
    trips, calls = await meter.measure(
        lambda: queue.acknowledge_messages([m.id for m in msgs[:100]])
    )
    assert (trips, calls) == (1, {"xack": 1})
    trips, calls = await meter.measure(lambda: queue.delete_messages([m.id for m in msgs[100:]]))
    assert trips == 1
    assert calls == {"multi": 1, "xack": 1, "xdel": 1, "zrem": 1, "exec": 1}


async def test_info_calls(meter: Meter, pmq: LeanMQ, queue: Queue) -> None:
    trips, calls = await meter.measure(queue.get_info)
    assert trips == 1
    # The two priority levels' XLEN, XINFO GROUPS and ZCARD ride in the same round trip.
    assert calls == {"xlen": 3, "xinfo|groups": 3, "hgetall": 1, "zcard": 3}
    await pmq.create_queue_pair("rt-2")
    await pmq.create_queue_pair("rt-3")
    trips, calls = await meter.measure(pmq.list_queues)
    assert trips == 2
    # Two SMEMBERS in one round trip: the registry, and its pre-0.2-migration key (issue 15).
    # 3 main queues with 2 priority levels each, and 3 DLQs.
    assert calls == {"smembers": 2, "xlen": 12, "xinfo|groups": 12, "hgetall": 6, "zcard": 12}


def record_writes(monkeypatch: pytest.MonkeyPatch, names: tuple[bytes, ...]) -> list[list[bytes]]:
    """From now on, record for every packed write which of ``names`` it sends as command
    names (not inside a script's text); one list per write, in order."""
    writes: list[list[bytes]] = []
    original = AbstractConnection.send_packed_command

    async def recording(conn: AbstractConnection, command: Any, *args: Any, **kw: Any) -> None:
        chunks = [command] if isinstance(command, bytes | str) else list(command)
        data = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
        writes.append([n for n in names if b"$%d\r\n%s\r\n" % (len(n), n) in data])
        await original(conn, command, *args, **kw)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", recording)
    return writes


async def test_a_worker_sends_its_acks_with_its_next_read(
    pmq: LeanMQ, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Messages arriving one at a time: each handled message's XACK goes out in the same
    # write as the XREADGROUP that follows it, not in a round trip of its own.
    handled: list[int] = []
    handled_one = anyio.Event()

    @queue.handler
    async def handle(n: int) -> None:
        handled.append(n)
        handled_one.set()

    writes = record_writes(monkeypatch, (b"XACK", b"XREADGROUP"))
    with anyio.fail_after(20):
        async with pmq.worker(block_ms=1000):
            for n in range(10):
                await queue.send_message(n)
                await handled_one.wait()
                handled_one = anyio.Event()
                await anyio.sleep(0.01)  # past the acker's linger: it would have sent by now
    assert handled == list(range(10))
    with_read = sum(1 for w in writes if w == [b"XACK", b"XREADGROUP"])
    alone = sum(1 for w in writes if w == [b"XACK"])
    assert with_read >= 9 and alone <= 1, (with_read, alone)  # 1: the flush at shutdown


async def test_a_queue_never_using_priorities_is_read_as_before(
    pmq: LeanMQ, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Priorities (priority.py): a worker on a plain queue reads with XREADGROUP alone, as
    # before; what it adds is one EXISTS per queue per LEVEL_CHECK (fetcher, upkeep).
    handled: list[int] = []

    @queue.handler(concurrency=1)
    async def handle(n: int) -> None:
        handled.append(n)

    await queue.send_messages(range(200))
    names = (b"XREADGROUP", b"XREAD", b"EXISTS", b"EVALSHA", b"XACK")
    recorded = record_writes(monkeypatch, names)
    started = time.monotonic()
    with anyio.fail_after(20):
        async with pmq.worker(block_ms=1000, burst=True):
            pass
    seconds = time.monotonic() - started
    assert sorted(handled) == list(range(200))
    sent = [n for write in recorded for n in write]
    assert sent.count(b"XREAD") == 0
    assert sent.count(b"XREADGROUP") >= 200
    # One at start from the fetcher, the recovery and the upkeep each; then one per
    # LEVEL_CHECK from the fetcher and the upkeep.
    assert sent.count(b"EXISTS") <= 3 + 2 * (seconds / LEVEL_CHECK + 1), (
        sent.count(b"EXISTS"),
        seconds,
    )


async def test_a_worker_reading_priority_levels_sends_acks_with_its_claim(
    pmq: LeanMQ, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With priorities in use a read is one EVALSHA of claim.lua: the acks of handled
    # messages ride with it (one write), and no SCRIPT EXISTS precedes it.
    handled: list[int] = []
    handled_one = anyio.Event()

    @queue.handler
    async def handle(n: int) -> None:
        handled.append(n)
        handled_one.set()

    await queue.send_message(-1, priority="high")  # priorities in use from the start
    writes = record_writes(monkeypatch, (b"XACK", b"EVALSHA", b"SCRIPT", b"EXISTS", b"XREADGROUP"))
    with anyio.fail_after(20):
        async with pmq.worker(block_ms=1000):
            for n in range(10):
                await queue.send_message(n, priority="high")
                while n not in handled:
                    await handled_one.wait()
                    handled_one = anyio.Event()
                await anyio.sleep(0.01)
    with_claim = sum(1 for w in writes if w == [b"XACK", b"EVALSHA"])
    assert with_claim >= 9, writes
    assert not any(b"XREADGROUP" in w for w in writes)
    assert not any(b"SCRIPT" in w and b"EXISTS" in w for w in writes)  # no SCRIPT EXISTS


async def test_concurrent_sends_share_round_trips(meter: Meter, queue: Queue) -> None:
    # Issue 14: the first send goes out alone, the 199 made while it is in flight go out
    # together in one pipeline as soon as it lands.
    async def run() -> None:
        await asyncio.gather(*(queue.send_message(i) for i in range(200)))

    await run()  # any connection it needs is opened here
    trips, calls = await meter.measure(run)
    assert (trips, calls) == (2, {"xadd": 200})
