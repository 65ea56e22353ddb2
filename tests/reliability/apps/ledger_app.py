"""Worker app of the reliability suite: one handler that records every execution in a
ledger file, configured by environment variables.

Run as ``python -m tests.reliability.apps.ledger_app`` (it serves until stopped, or
drains the queue with APP_BURST=1) or through the CLI as
``leanmq-worker tests.reliability.apps.ledger_app:mq``.

Environment: LEANMQ_TEST_URL, LEANMQ_TEST_PREFIX (required); APP_LEDGER (ledger file,
required); APP_CONSUMER (consumer name, kept across restarts); APP_QUEUE ("work");
APP_CONCURRENCY (10); APP_LEASE (visibility_timeout, 5 s); APP_SLEEP (seconds each
handler sleeps, 0; APP_JITTER spreads it by ± that fraction); APP_MAX_DELIVERIES (5);
APP_CRASH_MID (after recording this message as done on its first delivery, the process
ends with os._exit(3): success without ack);
APP_KILL_MID (this message ends the process with os._exit(4) every time, before it is
done); APP_SKEW (seconds added to this process's time.time(): a wrong clock);
APP_BLOCK_MS (100); APP_BURST (1: exit once drained); APP_GRACE (grace period, 10 s).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import anyio

from leanmq_async import LeanMQ, Message
from leanmq_async.worker.cli import configure_logging
from tests.reliability.ledger import Ledger
from tests.worker_apps.common import ENV_PREFIX, ENV_URL, env_float, env_int

SKEW = env_float("APP_SKEW", 0.0)
if SKEW:
    _real_time = time.time

    def _skewed_time() -> float:
        return _real_time() + SKEW

    time.time = _skewed_time

CONSUMER = os.environ.get("APP_CONSUMER") or None
CRASH_MID = os.environ.get("APP_CRASH_MID", "")
KILL_MID = os.environ.get("APP_KILL_MID", "")
SLEEP = env_float("APP_SLEEP", 0.0)
JITTER = env_float("APP_JITTER", 0.0)  # each sleep is SLEEP * (1 ± JITTER)

ledger = Ledger(os.environ["APP_LEDGER"])
mq = LeanMQ(os.environ[ENV_URL], prefix=os.environ[ENV_PREFIX], consumer_name=CONSUMER)
queue = mq.queue(os.environ.get("APP_QUEUE", "work"))


@queue.handler(
    concurrency=env_int("APP_CONCURRENCY", 10),
    visibility_timeout=env_float("APP_LEASE", 5.0),
    max_deliveries=env_int("APP_MAX_DELIVERIES", 5),
)
async def handle(message: Message[dict[str, Any]]) -> None:
    mid = str(message.data["mid"])
    info = {"who": mq.consumer_name, "sid": message.id, "dc": message.delivery_count}
    ledger.record(mid, "start", **info)
    if mid == KILL_MID:
        os._exit(4)
    if SLEEP:
        await anyio.sleep(SLEEP * random.uniform(1 - JITTER, 1 + JITTER))
    ledger.record(mid, "done", **info)
    if mid == CRASH_MID and message.delivery_count == 1:
        os._exit(3)


async def main() -> None:
    configure_logging("info", "console")
    async with mq:
        await mq.run_worker(
            burst=os.environ.get("APP_BURST") == "1",
            block_ms=env_int("APP_BLOCK_MS", 100),
            grace_period=env_float("APP_GRACE", 10.0),
            maintenance_interval=0.05,
        )


if __name__ == "__main__":
    anyio.run(main)
