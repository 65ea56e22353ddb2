"""A throwaway Redis Sentinel set for tests: one primary, one replica, three sentinels.

Made to be broken on purpose (``kill``, failovers): never point it at a server you care
about. Its sync API runs in the main thread, outside the event loop (see
:mod:`leanmq_async.testing`).
"""

from __future__ import annotations

import os
from pathlib import Path

from leanmq_async.testing import RedisServer
from leanmq_async.testing_topology import (
    _admin,
    _call,
    _online_replica_of,
    _quiet_port,
    _wait_for,
)


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
