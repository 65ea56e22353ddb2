"""The consumers the benchmarks time: plain Redis ceilings, the leanmq_async worker, LeanMQ 0.2.

Every drain returns a dict with at least ``elapsed`` (seconds from start until the last
message is acknowledged in Redis) and ``handled``.

* plain ceilings (``plain_drain``): ``XREADGROUP COUNT 1000`` (non-blocking), decode each
  entry's JSON envelope with msgspec, run a no-op async handler per message (one asyncio
  task, one anyio task-group child, or awaited in a loop), one ``XACK`` per batch; stop
  at the first empty read. Nothing else: no leases, no retries, no decode checks.
* leanmq_async (``lmq_drain``): ``mq.worker(burst=True)`` with a no-op handler. The clock
  starts before the worker is created (startup, group creation and spawning the
  processor tasks count) and stops when the handler has been entered for every message
  *and* XPENDING of the group reads 0 (polled every ms by a second connection only once
  the last handler ran, so the poll does not load the hot path). Burst mode's own exit
  (an empty blocking read of ``block_ms``, then a check that nothing is pending) is timed
  separately as ``exit_tail``.
* LeanMQ 0.2 (``sync_drain``): ``get_messages(count=100)`` + ``acknowledge_messages`` in
  the main thread, a no-op sync handler; its reads run one XPENDING per message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis

from leanmq_async import LeanMQ
from leanmq_async.keys import QueueKeys, default_group

PREFIX = "bench:"
QUEUE = "drain"
READ_COUNT = 1000

PLAIN_MODES = {
    "tasks": "XREADGROUP 1000 + asyncio.create_task per msg + XACK per batch",
    "anyio": "XREADGROUP 1000 + anyio tg.start_soon per msg + XACK per batch",
    "loop": "XREADGROUP 1000 + handler awaited in a loop + XACK per batch",
}


def lmq_names(queue: str = QUEUE, prefix: str = PREFIX) -> tuple[str, str, str]:
    """(stream, group, dlq stream) of a leanmq_async queue, without I/O."""
    keys = QueueKeys(prefix, queue)
    return keys.stream, default_group(queue), keys.dlq


async def noop(payload: Any) -> None:
    return None


def is_poison(payload: Any) -> bool:
    return bool(payload["order_id"] % 100 == 0)


# -- the ceiling --------------------------------------------------------------------------


async def plain_drain(
    url: str, stream: str, group: str, consumer: str, mode: str, *, create_group: bool = True
) -> dict[str, Any]:
    r = aioredis.Redis.from_url(url)
    decode = msgspec.json.decode
    handled = 0
    try:
        if create_group:
            try:
                await r.xgroup_create(stream, group, "0", mkstream=True)
            except Exception as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        await r.ping()
        t0 = t_done = time.perf_counter()
        while True:
            reply = await r.xreadgroup(group, consumer, {stream: ">"}, count=READ_COUNT)
            if not reply:
                break
            entries = reply[0][1]
            if not entries:
                break
            if mode == "tasks":
                create = asyncio.create_task
                tasks = [create(noop(decode(f[b"j"])["p"])) for _, f in entries]
                await asyncio.gather(*tasks)
            elif mode == "anyio":
                async with anyio.create_task_group() as tg:
                    for _, f in entries:
                        tg.start_soon(noop, decode(f[b"j"])["p"])
            else:
                for _, f in entries:
                    await noop(decode(f[b"j"])["p"])
            await r.xack(stream, group, *[sid for sid, _ in entries])
            handled += len(entries)
            t_done = time.perf_counter()
        return {"elapsed": t_done - t0, "handled": handled}
    finally:
        await r.aclose()


# -- leanmq_async -------------------------------------------------------------------------


async def lmq_drain(
    url: str,
    expected: int | None,
    concurrency: int,
    *,
    poison: int = 0,
    block_ms: int = 100,
    queue: str = QUEUE,
    prefix: str = PREFIX,
    consumer_name: str | None = None,
    max_retries: int | None = None,
    wait_all_acked: bool = True,
) -> dict[str, Any]:
    """Drain ``expected`` messages with a burst worker; ``poison`` of them always raise.

    With ``poison``, each poison message runs twice (max_retries=1, no backoff) and ends
    in the DLQ, so the handler is entered ``expected + poison`` times. With ``expected``
    None (one of several worker processes), just run until burst mode stops the worker.
    """
    stream, group, dlq = lmq_names(queue, prefix)
    mq = LeanMQ(url, prefix=prefix, consumer_name=consumer_name)
    q = mq.queue(queue)
    calls = 0
    target = (expected or 0) + poison
    all_called = anyio.Event()

    if poison:

        async def handler(payload: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == target:
                all_called.set()
            if is_poison(payload):
                raise ValueError("poison message")

        q.handler(concurrency=concurrency, max_retries=max_retries or 1, backoff=lambda attempt: 0)(
            handler
        )
    else:

        async def handler(payload: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == target:
                all_called.set()

        opts: dict[str, Any] = {"concurrency": concurrency}
        if max_retries is not None:
            opts["max_retries"] = max_retries
        q.handler(**opts)(handler)

    monitor = aioredis.Redis.from_url(url)
    try:
        await monitor.ping()
        t0 = time.perf_counter()
        async with mq.worker(burst=True, block_ms=block_ms) as w:
            if expected is None:
                await w._finished.wait()
            else:
                await all_called.wait()
            t_called = time.perf_counter()
            if wait_all_acked and expected is not None:
                while True:
                    summary = await monitor.xpending(stream, group)
                    if int(summary["pending"]) == 0:
                        break
                    await anyio.sleep(0.001)
            t_done = time.perf_counter()
            await w._finished.wait()
        t_exit = time.perf_counter()
        stats = w.stats
        dlq_len = int(await monitor.xlen(dlq))
    finally:
        await monitor.aclose()
        await mq.aclose()
    return {
        "elapsed": t_done - t0,
        "last_handler_s": t_called - t0,
        "exit_tail_s": t_exit - t_done,
        "handled": stats.handled,
        "failed": stats.failed,
        "retried": stats.retried,
        "dead_lettered": stats.dead_lettered,
        "received": stats.received,
        "dlq_length": dlq_len,
        "calls": calls,
    }


# -- LeanMQ 0.2 ---------------------------------------------------------------------------


def noop_sync(data: Any) -> None:
    return None


def sync_drain(queue: Any, consumer: str = "bench", dlq: Any = None) -> dict[str, Any]:
    """Drain a LeanMQ 0.2 queue; with ``dlq``, poison messages are moved there."""
    handled = failed = 0
    t0 = t_done = time.perf_counter()
    while True:
        messages = queue.get_messages(count=100, consumer_id=consumer)
        if not messages:
            break
        ok: list[str] = []
        bad: list[str] = []
        for m in messages:
            if dlq is not None and is_poison(m.data):
                bad.append(m.id)
            else:
                noop_sync(m.data)
                ok.append(m.id)
        if ok:
            queue.acknowledge_messages(ok)
        if bad:
            queue.move_to_dlq(bad, "poison message", dlq)
        handled += len(ok)
        failed += len(bad)
        t_done = time.perf_counter()
    return {"elapsed": t_done - t0, "handled": handled, "failed": failed}


def check_counts(what: str, got: int, want: int) -> None:
    if got != want:
        raise AssertionError(f"{what}: handled {got} messages, expected {want}")


def fmt_seconds(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}s" for v in values)
