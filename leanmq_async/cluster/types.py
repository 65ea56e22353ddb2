"""The client types LeanMQ works with, and the URL schemes naming a cluster or sentinels."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

AnyRedis = aioredis.Redis | AsyncRedisCluster
"""A client LeanMQ can work with: single node (or Sentinel-managed), or a cluster."""


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, AsyncRedisCluster)
