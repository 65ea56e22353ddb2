"""Periodic jobs on Redis Cluster (issue 16): each job's state, stream and delayed keys share
the job queue's hash slot, so the tick script runs there; jobs spread over slots."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from leanmq_async import LeanMQ
from leanmq_async.ops.cron_list import collect_cron
from tests.cluster_fixtures import scmq, small_cluster
from tests.worker_apps.common import wait_until

__all__ = ["scmq", "small_cluster"]  # fixtures, imported for pytest

pytestmark = pytest.mark.anyio


async def test_jobs_in_different_slots_run_and_are_listed(scmq: LeanMQ) -> None:
    ran: dict[str, list[int]] = {"a": [], "b": []}

    @scmq.cron(every=0.3, name="a", jitter=0.05)
    async def job_a() -> None:
        ran["a"].append(1)

    @scmq.cron(every=0.3, name="b")
    async def job_b() -> None:
        ran["b"].append(1)

    keys_a, keys_b = scmq.queue("cron.a").keys, scmq.queue("cron.b").keys
    assert key_slot(keys_a.stream.encode()) != key_slot(keys_b.stream.encode())
    assert {key_slot(k.encode()) for k in (keys_a.cron, keys_a.delayed, keys_a.stream)} == {
        key_slot(keys_a.stream.encode())
    }
    async with scmq.worker(block_ms=50):
        await wait_until(
            lambda: len(ran["a"]) >= 2 and len(ran["b"]) >= 2, within=15, what="runs of both"
        )
    jobs = {j.name: j for j in await collect_cron(scmq)}
    assert set(jobs) == {"a", "b"}
    assert jobs["a"].runs >= 2 and jobs["b"].outcome == "ok"
