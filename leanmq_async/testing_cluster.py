"""Throwaway Redis Cluster topologies for tests (sentinels: :mod:`.testing_sentinel`).

* :class:`RedisCluster`: ``primaries`` cluster primaries with ``replicas`` replicas each,
  every node a private ``redis-server --cluster-enabled yes`` on a free loopback port,
  joined with ``redis-cli --cluster create``.
* :class:`RedisSentinelSet` (re-exported from :mod:`.testing_sentinel`): one primary,
  one replica and three sentinels watching the primary as ``mymaster``.

Both have a sync API (call it from the main thread, outside the event loop: servers die
with the thread that started them, see :mod:`leanmq_async.testing`) with ``start``,
``close``, ``kill(node)`` (SIGKILL, like a crash) and failover helpers that wait until the
topology has settled. They are made to be broken on purpose: never point them at a
server you care about.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence

import redis
from redis.crc import key_slot

from leanmq_async.testing import RedisServer, find_redis_server
from leanmq_async.testing_sentinel import RedisSentinelSet, SentinelServer
from leanmq_async.testing_topology import (
    _call,
    _online_replica_of,
    _quiet_port,
    _wait_for,
    find_redis_cli,
)

__all__ = [
    "RedisCluster",
    "RedisSentinelSet",
    "SentinelServer",
    "cluster_support",
    "find_redis_cli",
]


def cluster_support() -> str | None:
    """None if a local cluster can be built here, else the reason why not."""
    try:
        find_redis_server()
        cli = find_redis_cli()
    except FileNotFoundError as exc:
        return str(exc)
    try:
        out = subprocess.run(
            [cli, "--cluster", "help"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"redis-cli does not run: {exc}"
    if "create" not in out.stdout + out.stderr:
        return "redis-cli has no --cluster support (Redis >= 5 is needed)"
    return None


class RedisCluster:
    """A local Redis Cluster of throwaway servers (sync API, main thread).

    ``nodes`` are :class:`~leanmq_async.testing.RedisServer` objects; ``node_timeout``
    (ms) is the cluster's failure detection time, kept short so failovers are quick.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        *,
        node_timeout: int = 2000,
        extra_args: Sequence[str] = (),
    ) -> None:
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        self.node_timeout = node_timeout
        self.replicas = replicas
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout),
            # Keep the cluster serving the slots it still covers while one is failing over.
            "--cluster-require-full-coverage", "no",
            "--repl-diskless-sync-delay", "0",
            *extra_args,
        ]  # fmt: skip
        # An explicit bus port: the default (port + 10000) may be taken, or above 65535.
        self._args = args
        self.nodes = [self._new_node() for _ in range(primaries * (1 + replicas))]

    def _new_node(self) -> RedisServer:
        port, bus = _quiet_port(), _quiet_port()
        return RedisServer(port, args=[*self._args, "--cluster-port", str(bus)])

    def __repr__(self) -> str:
        alive = sum(n.running for n in self.nodes)
        return f"<RedisCluster nodes={len(self.nodes)} alive={alive}>"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RedisCluster:
        """Start every node, create the cluster, and wait until every slot is served."""
        try:
            for i, node in enumerate(self.nodes):
                for attempt in range(5):
                    try:
                        node.start()
                        break
                    except RuntimeError as exc:
                        if "in use" not in str(exc) or attempt == 4:
                            raise
                        node.close()  # a port was taken meanwhile: two new ones
                        node = self.nodes[i] = self._new_node()
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            cmd = [find_redis_cli(), "--cluster", "create", *addresses]
            cmd += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}{out.stderr}")
            self.wait_stable(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every node and delete their directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addresses -----------------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL listing every node (the client needs one reachable)."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.startup_nodes)

    def node(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node on port {port}")

    def alive(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    # -- topology ------------------------------------------------------------------------

    def slot_owners(self) -> dict[int, int]:
        """Slot -> port of its primary, as one live node sees it."""
        for node in self.alive():
            try:
                ranges = _call(node.port, "CLUSTER", "SLOTS")
            except (redis.RedisError, OSError):
                continue
            owners: dict[int, int] = {}
            for start, end, primary, *_ in ranges:
                for slot in range(int(start), int(end) + 1):
                    owners[slot] = int(primary[1])
            return owners
        raise RuntimeError("no cluster node answers")

    def primary_for(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now."""
        return self.node(self.slot_owners()[key_slot(key.encode())])

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        """The replicas connected to ``primary`` now (as its ``ROLE`` lists them)."""
        role = _call(primary.port, "ROLE")
        return [self.node(int(port)) for _, port, _ in role[2]] if role[0] == "master" else []

    def primaries(self) -> list[RedisServer]:
        return [self.node(p) for p in sorted(set(self.slot_owners().values()))]

    def wait_stable(self, timeout: float = 30.0) -> None:
        """Wait until every live node says ``cluster_state:ok`` and agrees on the owners.

        Each slot's owner must be alive, and every live replica in sync with its primary
        and counted by it (``WAIT`` counts only replicas the primary sees online).
        """

        def probe() -> bool | None:
            views = []
            for node in self.alive():
                info = _call(node.port, "CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return None
                role = _call(node.port, "ROLE")
                if role[0] == "slave" and (
                    role[3] != "connected" or not _online_replica_of(role[1], role[2], node.port)
                ):
                    return None
                views.append(
                    sorted(
                        (int(r[0]), int(r[1]), int(r[2][1]))
                        for r in _call(node.port, "CLUSTER", "SLOTS")
                    )
                )
            if not views or any(v != views[0] for v in views):
                return None
            covered = sum(end - start + 1 for start, end, _ in views[0])
            alive_ports = {n.port for n in self.alive()}
            if covered != 16384 or any(p not in alive_ports for _, _, p in views[0]):
                return None
            return True

        _wait_for("cluster stable", probe, timeout, interval=0.1)

    # -- faults --------------------------------------------------------------------------

    def kill(self, node: RedisServer) -> None:
        """SIGKILL ``node`` (a crash: nothing it had not replicated survives)."""
        node.kill()

    def kill_primary_of(self, key: str, timeout: float = 30.0) -> tuple[RedisServer, RedisServer]:
        """SIGKILL the primary serving ``key``; wait until a replica took over its slots.

        Returns ``(killed, promoted)``.
        """
        killed = self.primary_for(key)
        slot = key_slot(key.encode())
        killed.kill()
        promoted = self.wait_for_new_owner(slot, killed.port, timeout)
        return killed, promoted

    def wait_for_new_owner(self, slot: int, old_port: int, timeout: float = 30.0) -> RedisServer:
        def probe() -> RedisServer | None:
            owner = self.slot_owners().get(slot)
            if owner is None or owner == old_port or not self.node(owner).running:
                return None
            if "cluster_state:ok" not in _call(owner, "CLUSTER", "INFO"):
                return None
            return self.node(owner)

        return _wait_for(f"failover of slot {slot}", probe, timeout, interval=0.1)

    def failover(self, replica: RedisServer, timeout: float = 30.0) -> None:
        """A manual, graceful ``CLUSTER FAILOVER`` on ``replica`` (no write is lost).

        Redis abandons a manual failover that does not complete within 5 s (the primary
        and the replica must agree on the replication offset), silently: it is asked
        again until ``timeout``.
        """

        def probe() -> bool | None:
            return True if _call(replica.port, "ROLE")[0] == "master" else None

        deadline = time.monotonic() + timeout
        while True:
            if probe():  # a late success of the previous request
                break
            _call(replica.port, "CLUSTER", "FAILOVER")
            try:
                _wait_for("manual failover", probe, min(6.0, deadline - time.monotonic()))
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
        self.wait_stable(timeout)

    def restart(self, node: RedisServer, timeout: float = 30.0) -> None:
        """Start a killed node again; it rejoins (as a replica of its slots' new owner)."""
        node.start()
        self.wait_stable(timeout)
