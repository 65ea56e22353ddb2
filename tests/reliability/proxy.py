"""A TCP proxy in front of a private redis-server that breaks the network on command.

It runs in its own thread (one ``poll`` loop), listens on a free 127.0.0.1 port and
forwards each accepted connection to the upstream server. On command it can:

* ``delay(seconds)``: hold every chunk that long before forwarding it (both directions);
* ``cut()``: reset every open connection (RST), as a dying middlebox would;
* ``black_hole("freeze")``: stop forwarding in both directions (bytes wait in the kernel
  buffers, new connections are accepted but not connected upstream), like a network
  partition; ``heal()`` resumes every connection where it stopped, as TCP would;
* ``black_hole("drop")``: accept and read everything, forward nothing (the bytes are
  discarded); ``heal()`` then resets the connections that lost bytes (TCP never delivers
  a stream with a hole in it) and forwards normally again.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import threading
import time
from collections import deque
from typing import Literal

__all__ = ["Proxy"]

Mode = Literal["forward", "freeze", "drop"]
_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Pair:
    __slots__ = ("client", "client_eof", "tainted", "to_client", "to_up", "up", "up_eof")

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.up: socket.socket | None = None
        self.to_up: deque[list[object]] = deque()  # [deliver_at, bytes]
        self.to_client: deque[list[object]] = deque()
        self.client_eof = False
        self.up_eof = False
        self.tainted = False


class Proxy:
    """Forward 127.0.0.1:<port> to ``upstream``; break it on command (thread-safe)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.mode: Mode = "forward"
        self._delay = 0.0
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._commands: deque[tuple[str, object]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._closed = False
        self.accepted = 0
        self.cuts = 0
        self.dropped_bytes = 0
        self._thread = threading.Thread(target=self._run, name="reliability-proxy", daemon=True)

    def __repr__(self) -> str:
        return f"<Proxy 127.0.0.1:{self.port} -> {self.upstream[1]} {self.mode}>"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def start(self) -> Proxy:
        self._thread.start()
        return self

    # -- commands (any thread) -------------------------------------------------------------

    def _command(self, name: str, arg: object = None) -> None:
        done = threading.Event()
        with self._lock:
            self._commands.append((name, (arg, done)))
        try:
            self._wake_w.send(b"x")
        except OSError:
            return
        if threading.current_thread() is not self._thread:
            done.wait(5)

    def delay(self, seconds: float) -> None:
        self._command("delay", seconds)

    def cut(self) -> None:
        self._command("cut")

    def black_hole(self, mode: Literal["freeze", "drop"] = "freeze") -> None:
        self._command("mode", mode)

    def heal(self) -> None:
        self._command("heal")

    def close(self) -> None:
        if self._closed:
            return
        self._command("close")
        self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop (proxy thread) -----------------------------------------------------------

    def _apply(self, name: str, arg: object) -> None:
        if name == "delay":
            assert isinstance(arg, float | int)
            self._delay = float(arg)
        elif name == "cut":
            for pair in list(self._pairs):
                self._close(pair, rst=True)
            self.cuts += 1
        elif name == "mode":
            self.mode = arg  # type: ignore[assignment]
        elif name == "heal":
            self.mode = "forward"
            for pair in list(self._pairs):
                if pair.tainted:
                    self._close(pair, rst=True)
                elif pair.up is None:
                    self._connect(pair)
        elif name == "close":
            for pair in list(self._pairs):
                self._close(pair, rst=True)
            self.listener.close()
            self._closed = True

    def _connect(self, pair: _Pair) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            self._close(pair, rst=True)  # upstream down: refuse, like the server would
            return
        up.setblocking(False)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair.up = up

    def _close(self, pair: _Pair, *, rst: bool = False) -> None:
        for sock in (pair.client, pair.up):
            if sock is not None:
                if rst:
                    _reset(sock)
                else:
                    sock.close()
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client)
            self.accepted += 1
            with self._lock:
                self._pairs.append(pair)
            if self.mode == "forward":
                self._connect(pair)
            elif self.mode == "drop":
                pair.tainted = True

    @staticmethod
    def _due(queue: deque[list[object]], now: float) -> bool:
        return bool(queue) and float(queue[0][0]) <= now  # type: ignore[arg-type]

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                commands = list(self._commands)
                self._commands.clear()
            for name, payload in commands:
                arg, done = payload  # type: ignore[misc]
                self._apply(name, arg)
                done.set()
            if self._closed:
                return
            now = time.monotonic()
            poller = select.poll()
            fds: dict[int, tuple[_Pair | None, str]] = {}
            poller.register(self._wake_r, select.POLLIN)
            poller.register(self.listener, select.POLLIN)
            next_due: float | None = None
            frozen = self.mode == "freeze"
            for pair in list(self._pairs):
                if frozen:
                    continue
                ev_c = 0
                ev_u = 0
                if not pair.client_eof:
                    ev_c |= select.POLLIN
                if pair.up is not None and not pair.up_eof:
                    ev_u |= select.POLLIN
                for queue, is_client in ((pair.to_client, True), (pair.to_up, False)):
                    if not queue:
                        continue
                    if self._due(queue, now):
                        if is_client:
                            ev_c |= select.POLLOUT
                        elif pair.up is not None:
                            ev_u |= select.POLLOUT
                    else:
                        at = float(queue[0][0])  # type: ignore[arg-type]
                        next_due = at if next_due is None else min(next_due, at)
                if ev_c:
                    poller.register(pair.client, ev_c)
                    fds[pair.client.fileno()] = (pair, "client")
                if ev_u and pair.up is not None:
                    poller.register(pair.up, ev_u)
                    fds[pair.up.fileno()] = (pair, "up")
            timeout = 200.0
            if next_due is not None:
                timeout = max(0.0, min(timeout, (next_due - now) * 1000))
            try:
                ready = poller.poll(timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            for fd, event in ready:
                if fd == self._wake_r.fileno():
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                if fd == self.listener.fileno():
                    self._accept()
                    continue
                entry = fds.get(fd)
                if entry is None:
                    continue
                pair, side = entry
                assert pair is not None
                if pair not in self._pairs:
                    continue
                try:
                    self._service(pair, side, event, now)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                        self._close(pair, rst=True)
            self._reap()

    def _service(self, pair: _Pair, side: str, event: int, now: float) -> None:
        sock = pair.client if side == "client" else pair.up
        assert sock is not None
        out = pair.to_client if side == "client" else pair.to_up
        if event & select.POLLOUT:
            while self._due(out, now):
                item = out[0]
                data = item[1]
                assert isinstance(data, bytes)
                sent = sock.send(data)
                if sent < len(data):
                    item[1] = data[sent:]
                    break
                out.popleft()
        if event & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                if side == "client":
                    pair.client_eof = True
                else:
                    pair.up_eof = True
                return
            if self.mode == "drop":
                pair.tainted = True
                self.dropped_bytes += len(data)
                return
            target = pair.to_up if side == "client" else pair.to_client
            target.append([now + self._delay, data])

    def _reap(self) -> None:
        """Close pairs whose one side ended once what it sent has been forwarded."""
        for pair in list(self._pairs):
            if self.mode == "freeze":
                return
            if (pair.client_eof and not pair.to_up) or (pair.up_eof and not pair.to_client):
                self._close(pair)
