"""An app for the periodic-job tests: one job ``beat`` every second (or CRON_TEST_EVERY).

Reads LEANMQ_URL (required) and CLI_TEST_PREFIX. Each run pushes ``<tick ms>:<pid>`` to
``<prefix>beats``, so a test sees which tick ran, how often, and in which process.
"""

from __future__ import annotations

import os

from leanmq_async import CronRun, LeanMQ

PREFIX = os.environ["CLI_TEST_PREFIX"]

mq = LeanMQ(os.environ["LEANMQ_URL"], prefix=PREFIX)


@mq.cron(every=float(os.environ.get("CRON_TEST_EVERY", "1")))
async def beat(run: CronRun) -> None:
    await mq.redis.rpush(f"{PREFIX}beats", f"{run.tick_ms}:{os.getpid()}")
