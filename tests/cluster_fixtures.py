"""A small Redis Cluster for the partition tests: 3 primaries, no replicas.

Import the fixtures into a test module (``from tests.cluster_fixtures import
small_cluster, scmq``). The cluster is module-scoped, so it is gone once that module's
tests ran; without ``redis-cli --cluster`` the tests that use it are skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from leanmq_async import LeanMQ
from leanmq_async.testing_cluster import RedisCluster, cluster_support

__all__ = ["scmq", "small_cluster"]


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[RedisCluster]:
    """3 primaries without replicas (a few seconds to start)."""
    reason = cluster_support()
    if reason is not None:
        pytest.skip(f"no local Redis Cluster can be built: {reason}")
    with RedisCluster(primaries=3, replicas=0) as cluster:
        yield cluster


@pytest.fixture
async def scmq(small_cluster: RedisCluster, prefix: str) -> AsyncIterator[LeanMQ]:
    """A client of :func:`small_cluster` with the test's own prefix."""
    async with LeanMQ(small_cluster.url, prefix=prefix) as client:
        yield client
