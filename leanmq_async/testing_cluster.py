"""Throwaway Redis Cluster and Sentinel topologies for tests (built on :mod:`.testing`).

* :class:`RedisCluster`: ``primaries`` cluster primaries with ``replicas`` replicas each,
  every node a private ``redis-server --cluster-enabled yes`` on a free loopback port,
  joined with ``redis-cli --cluster create``.
* :class:`RedisSentinelSet`: one primary, one replica and three sentinels watching the
  primary as ``mymaster``.

Both have a sync API (call it from the main thread, outside the event loop: servers die
with the thread that started them, see :mod:`leanmq_async.testing`) with ``start``,
``close``, ``kill(node)`` (SIGKILL, like a crash) and failover helpers that wait until the
topology has settled. They are made to be broken on purpose: never point them at a
server you care about.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.crc import key_slot

from leanmq_async.testing import RedisServer, find_redis_server, free_port

__all__ = [
    "RedisCluster",
    "RedisSentinelSet",
    "SentinelServer",
    "cluster_support",
    "find_redis_cli",
]

T = TypeVar("T")


def find_redis_cli() -> str:
    """The path of ``redis-cli`` (next to redis-server, or on PATH)."""
    explicit = os.environ.get("LEANMQ_REDIS_CLI")
    if explicit:
        return explicit
    sibling = Path(find_redis_server()).with_name("redis-cli")
    if sibling.exists():
        return str(sibling)
    found = shutil.which("redis-cli")
    if found:
        return found
    raise FileNotFoundError("redis-cli not found: install Redis or set LEANMQ_REDIS_CLI")


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


def _wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.05
) -> T:
    """Call ``probe`` until it returns something not None (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
        except (redis.RedisError, OSError) as exc:
            last, value = exc, None
        if value is not None:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last!r})" if last is not None else ""
            raise TimeoutError(f"{what} did not happen within {timeout}s{detail}")
        time.sleep(interval)


def _admin(port: int, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def _quiet_port() -> int:
    """A free loopback port below the ephemeral range, so no outgoing connection of
    this machine takes it between now and the server's bind (a cluster needs 12)."""
    low, high = 20000, 32000
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        high = min(high, int(text[0]) - 1)
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def _call(port: int, *args: Any) -> Any:
    with _admin(port) as client:
        return client.execute_command(*args)


def _online_replica_of(host: str, port: int, replica_port: int) -> bool:
    """Does the primary on ``port`` see the replica on ``replica_port`` online, and has
    the replica acknowledged an offset yet (until then ``WAIT`` does not count it)?"""
    with _admin(int(port)) as client:
        info = client.info("replication")
    return any(
        isinstance(v, dict)
        and int(v.get("port", 0)) == replica_port
        and v.get("state") == "online"
        and int(v.get("offset", 0)) > 0
        for k, v in info.items()
        if k.startswith("slave")
    )


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


# -- Sentinel ----------------------------------------------------------------------------


class SentinelServer(RedisServer):
    """A ``redis-server --sentinel`` on a free loopback port, watching one primary."""

    def __init__(
        self,
        primary_port: int,
        *,
        service_name: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
    ) -> None:
        super().__init__(_quiet_port())
        self.config = Path(self.directory, "sentinel.conf")
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "protected-mode no",
                    f"dir {self.directory}",
                    f"logfile {os.path.join(self.directory, 'redis.log')}",
                    f"sentinel monitor {service_name} 127.0.0.1 {primary_port} {quorum}",
                    f"sentinel down-after-milliseconds {service_name} {down_after_ms}",
                    f"sentinel failover-timeout {service_name} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {service_name} 1",
                    "",
                ]
            )
        )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SentinelServer 127.0.0.1:{self.port} {state}>"

    def command_line(self) -> list[str]:
        # The config comes first; sentinel rewrites it as the topology changes.
        return [self.binary, str(self.config), "--sentinel"]


class RedisSentinelSet:
    """A primary, one replica and three sentinels (quorum 2) on loopback ports."""

    def __init__(
        self,
        *,
        service_name: str = "mymaster",
        sentinels: int = 3,
        down_after_ms: int = 1000,
    ) -> None:
        self.service_name = service_name
        # No diskless-sync delay: a replica (or a demoted primary) syncs at once.
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.primary = RedisServer(_quiet_port(), args=fast_sync)
        self.replica = RedisServer(
            _quiet_port(), args=[*fast_sync, "--replicaof", "127.0.0.1", str(self.primary.port)]
        )
        self.sentinels = [
            SentinelServer(
                self.primary.port, service_name=service_name, down_after_ms=down_after_ms
            )
            for _ in range(sentinels)
        ]
        self.servers = [self.primary, self.replica]

    def __repr__(self) -> str:
        return f"<RedisSentinelSet {self.service_name} primary=127.0.0.1:{self.primary.port}>"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service_name}/0"

    def start(self, timeout: float = 30.0) -> RedisSentinelSet:
        try:
            self.primary.start()
            self.replica.start()
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_stable(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()

    def __enter__(self) -> RedisSentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def server(self, port: int) -> RedisServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(f"no server on port {port}")

    def master_port(self) -> int:
        """The primary's port as the sentinels report it (all live ones must agree)."""
        ports = set()
        for sentinel in self.sentinels:
            if sentinel.running:
                addr = _call(
                    sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name
                )
                ports.add(int(addr[1]))
        if len(ports) != 1:
            raise RuntimeError(f"sentinels disagree on the primary: {sorted(ports)}")
        return ports.pop()

    def current_primary(self) -> RedisServer:
        return self.server(self.master_port())

    def wait_stable(self, timeout: float = 30.0) -> RedisServer:
        """Wait until the sentinels agree on a live primary with a synced replica,
        and know each other (so a failover can reach its quorum)."""

        def probe() -> RedisServer | None:
            port = self.master_port()
            primary = self.server(port)
            if not primary.running or _call(port, "ROLE")[0] != "master":
                return None
            replicas = [s for s in self.servers if s is not primary and s.running]
            for replica in replicas:
                role = _call(replica.port, "ROLE")
                if role[0] != "slave" or int(role[2]) != port or role[3] != "connected":
                    return None
                if not _online_replica_of("127.0.0.1", port, replica.port):
                    return None
            for sentinel in self.sentinels:
                if not sentinel.running:
                    continue
                with _admin(sentinel.port) as client:
                    state = client.sentinel_master(self.service_name)
                    others = client.sentinel_slaves(self.service_name)
                if state["is_sdown"] or state["is_odown"]:
                    return None
                if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return None
                if int(state["num-slaves"]) < len(replicas):
                    return None
                # A replica the sentinels still see as down (an old primary that came
                # back) would make the next failover wait for it.
                for r in others:
                    if self.server(int(r["port"])).running and r["is_sdown"]:
                        return None
            return primary

        return _wait_for("sentinel set stable", probe, timeout, interval=0.1)

    def failover(
        self, timeout: float = 30.0, *, demote_now: bool = True
    ) -> tuple[RedisServer, RedisServer]:
        """``SENTINEL FAILOVER``: the replica is promoted, the old primary demoted to a
        replica of it (still running: clients still connected to it get ``READONLY``).

        The sentinels demote the old primary themselves only some seconds after the
        promotion (about 10 s); ``demote_now`` sends it the same ``REPLICAOF`` at once.
        Returns ``(old, new)`` primaries.
        """
        old = self.current_primary()
        _call(self.sentinels[0].port, "SENTINEL", "FAILOVER", self.service_name)
        new = _wait_for("sentinel failover", lambda: self._new_primary(old), timeout)
        if demote_now:
            _call(old.port, "REPLICAOF", "127.0.0.1", str(new.port))
        self.wait_stable(timeout)
        return old, new

    def kill_primary(self, timeout: float = 30.0) -> tuple[RedisServer, RedisServer]:
        """SIGKILL the primary; wait until the sentinels promoted the replica."""
        old = self.current_primary()
        old.kill()
        new = _wait_for("sentinel failover", lambda: self._new_primary(old), timeout)
        return old, new

    def _new_primary(self, old: RedisServer) -> RedisServer | None:
        try:
            port = self.master_port()
        except RuntimeError:
            return None
        if port == old.port or _call(port, "ROLE")[0] != "master":
            return None
        return self.server(port)
