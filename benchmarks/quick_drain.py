"""Quick drain: how fast one worker process empties a queue of small messages.

Starts its own redis-server (never a server you care about), bulk-sends 20,000 JSON
messages of about 100 bytes with ``send_messages`` in chunks of 1,000, then runs a worker
in burst mode (it stops once the queue is drained) with a no-op handler at concurrency
200, and prints the send and drain rates. A first figure, not a careful benchmark: one
run, one process, Redis on the same machine.

    python benchmarks/quick_drain.py [--messages 20000] [--concurrency 200]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import msgspec

from leanmq_async import LeanMQ
from leanmq_async.testing import RedisServer

CHUNK = 1000


def payload(i: int) -> dict[str, Any]:
    # {"user_id":12345,"event":"page_view","path":"/products/12345","ts":...} ~ 100 bytes
    return {
        "user_id": i,
        "event": "page_view",
        "path": f"/products/{i:08d}",
        "ts": 1_700_000_000.123 + i,
        "tags": ["a", "b"],
    }


async def main(messages: int, concurrency: int) -> None:
    size = len(msgspec.json.encode(payload(messages)))
    with RedisServer() as server:
        async with LeanMQ(server.url, prefix="bench:") as mq:
            queue = mq.queue("drain")
            handled = 0

            @queue.handler(concurrency=concurrency)
            async def noop(data: Any) -> None:
                nonlocal handled
                handled += 1

            started = time.perf_counter()
            for first in range(0, messages, CHUNK):
                chunk = [payload(i) for i in range(first, min(first + CHUNK, messages))]
                await queue.send_messages(chunk)
            sent = time.perf_counter() - started

            started = time.perf_counter()
            worker = mq.worker(burst=True, block_ms=100)
            await worker.serve()
            drained = time.perf_counter() - started

            info = await queue.get_info()
    print(f"payload size            {size} bytes JSON ({messages} messages)")
    print(f"send_messages (x{CHUNK})   {sent:7.2f} s   {messages / sent:10,.0f} msg/s")
    print(
        f"drain, burst mode       {drained:7.2f} s   {handled / drained:10,.0f} msg/s"
        f"   (concurrency {concurrency}, handled {handled}, pending {info.pending_messages})"
    )
    stats = worker.stats
    print(f"worker stats            received={stats.received} handled={stats.handled}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    anyio.run(main, args.messages, args.concurrency)
