"""Several worker processes (``--workers N``) and the development reloader (``--reload``).

Both run in the parent process and start each worker as a fresh interpreter
(``python -m leanmq_async.worker.cli ...``, the same command line without ``--workers`` or
``--reload``), so a child imports the application itself and shares nothing with the
parent. Children get their own process group: a Ctrl+C in the terminal reaches only the
parent, which forwards it (and SIGTERM) to every child once per signal received, so the
first signal is a graceful stop everywhere and the second an immediate one. A child
also stops gracefully if its parent disappears (``$LEANMQ_WORKER_PARENT_PID``), so a
killed supervisor leaves no orphaned workers behind.

* :class:`WorkerPool` keeps ``N`` children running. A child that exits 0 is done (a
  ``--burst`` worker that drained its queues); one that crashes is started again, after a
  pause that grows while it keeps crashing; one that exits 2 (a command-line or import
  error) stops the pool. The pool exits 0 when every child exited 0.
* :class:`Reloader` runs one child and restarts it (SIGTERM, then a new process) when a
  ``.py`` file under the watched directories changes; it polls modification times, so it
  needs no extra package.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from leanmq_async._log import get_logger

__all__ = ["PARENT_PID_ENV", "Reloader", "WorkerPool", "forward_signals", "scan_sources"]

EXIT_USAGE = 2
PARENT_PID_ENV = "LEANMQ_WORKER_PARENT_PID"
_POLL = 0.05
_RESTART_DELAY_MAX = 30.0
_STABLE_AFTER = 30.0  # a child that ran this long resets the crash backoff
_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "build", "dist"})


def child_command(argv: Sequence[str]) -> list[str]:
    """The command line that runs one worker process with ``argv``."""
    return [sys.executable, "-m", "leanmq_async.worker.cli", *argv]


def _spawn(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    cmd = child_command(argv)
    # The child stops by itself if this process disappears without stopping it (SIGKILL).
    env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
    if sys.platform == "win32":  # pragma: no cover
        return subprocess.Popen(cmd, env=env, creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
    # Own process group: the terminal's Ctrl+C goes to the parent only, which forwards it.
    return subprocess.Popen(cmd, env=env, process_group=0)


@contextmanager
def forward_signals(
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[list[signal.Signals]]:
    """Queue the signals received in the block (for the parent's loop to forward).

    The handler only appends to a list, which is safe at any point of the main thread;
    the previous handlers are restored at the end of the block.
    """
    received: list[signal.Signals] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


class _Child:
    """One slot of the pool and the process currently in it."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.crashes = 0
        self.restart_at: float | None = None
        self.last_code = 0
        self.exit_code: int | None = None  # final: the slot is done

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class WorkerPool:
    """Run ``count`` worker processes until they finish or a signal stops them."""

    def __init__(
        self,
        argv: Sequence[str],
        count: int,
        *,
        slot_argv: Callable[[int], Sequence[str]] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self.argv = list(argv)
        # The command line of the child in a given slot (default: argv for all of them).
        self.slot_argv = slot_argv
        self.count = count
        self.children = [_Child(i) for i in range(count)]
        self.stopping = False
        self.log = get_logger("leanmq_async.cli")

    def _start(self, child: _Child) -> None:
        argv = self.argv if self.slot_argv is None else self.slot_argv(child.slot)
        child.process = _spawn(argv)
        child.started_at = time.monotonic()
        child.restart_at = None
        self.log.info("worker_process_started", slot=child.slot, child_pid=child.process.pid)

    def _signal_all(self, sig: signal.Signals) -> None:
        for child in self.children:
            if child.alive:
                assert child.process is not None
                child.process.send_signal(sig)

    def _begin_stop(self, sig: signal.Signals) -> None:
        self.stopping = True
        for child in self.children:
            if child.exit_code is None and not child.alive:
                child.exit_code = child.last_code  # waiting to restart after a crash
        self._signal_all(sig)

    def _reap(self, child: _Child, code: int) -> None:
        assert child.process is not None
        pid = child.process.pid
        child.process = None
        child.last_code = code
        if self.stopping or code == 0:
            child.exit_code = code
            self.log.info("worker_process_exited", slot=child.slot, child_pid=pid, code=code)
            return
        if code == EXIT_USAGE:
            child.exit_code = code
            self.log.error("worker_process_failed", slot=child.slot, child_pid=pid, code=code)
            self._begin_stop(signal.SIGTERM)
            return
        if time.monotonic() - child.started_at >= _STABLE_AFTER:
            child.crashes = 0
        delay = min(_RESTART_DELAY_MAX, 0.5 * 2**child.crashes)
        child.crashes += 1
        child.restart_at = time.monotonic() + delay
        self.log.warning(
            "worker_process_died", slot=child.slot, child_pid=pid, code=code, restart_in=delay
        )

    def run(self) -> int:
        """Start the children and supervise them; the exit code for the parent."""
        with forward_signals() as received:
            for child in self.children:
                self._start(child)
            while True:
                while received:
                    sig = received.pop(0)
                    self.log.info("signal_forwarded", signal=sig.name)
                    self._begin_stop(sig)
                for child in self.children:
                    if child.process is not None:
                        code = child.process.poll()
                        if code is not None:
                            self._reap(child, code)
                    elif (
                        child.exit_code is None
                        and child.restart_at is not None
                        and time.monotonic() >= child.restart_at
                    ):
                        self._start(child)
                if all(c.exit_code is not None for c in self.children):
                    break
                time.sleep(_POLL)
        failed = [c.exit_code for c in self.children if c.exit_code]
        return failed[0] if failed else 0


def _skip_dir(path: Path) -> bool:
    return (
        path.name.startswith(".")
        or path.name in _SKIP_DIRS
        or path.name.endswith(".egg-info")
        or (path / "pyvenv.cfg").exists()
    )


def scan_sources(roots: Sequence[Path]) -> dict[str, int]:
    """``{path: mtime_ns}`` of the ``.py`` files under ``roots`` (skipping venvs, caches)."""
    found: dict[str, int] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            base = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not _skip_dir(base / d)]
            for name in filenames:
                if name.endswith(".py"):
                    path = base / name
                    try:
                        found[str(path)] = path.stat().st_mtime_ns
                    except OSError:
                        continue  # deleted while scanning
    return found


def _changes(old: dict[str, int], new: dict[str, int]) -> list[str]:
    return sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))


class Reloader:
    """Run one worker process; restart it when a watched ``.py`` file changes."""

    def __init__(
        self, argv: Sequence[str], roots: Sequence[Path], *, interval: float = 0.5
    ) -> None:
        self.argv = list(argv)
        self.roots = [Path(r).resolve() for r in roots]
        self.interval = interval
        self.log = get_logger("leanmq_async.cli")

    def run(self) -> int:
        """Supervise the child until a signal stops it; its exit code."""
        snapshot = scan_sources(self.roots)
        process: subprocess.Popen[bytes] | None = None
        restarting = False
        stopping = False
        last_code = 0
        next_scan = time.monotonic() + self.interval
        self.log.info("reloader_started", watching=[str(r) for r in self.roots])
        with forward_signals() as received:
            process = self._start()
            while True:
                while received:
                    sig = received.pop(0)
                    stopping = True
                    if process is not None and process.poll() is None:
                        self.log.info("signal_forwarded", signal=sig.name)
                        process.send_signal(sig)
                if process is not None:
                    code = process.poll()
                    if code is not None:
                        last_code = code
                        process = None
                        if not restarting:
                            self.log.info(
                                "worker_process_exited",
                                code=code,
                                detail="" if stopping else "waiting for changes to restart",
                            )
                if stopping and process is None:
                    return last_code
                if restarting and process is None:
                    restarting = False
                    process = self._start()
                if time.monotonic() >= next_scan:
                    current = scan_sources(self.roots)
                    changed = _changes(snapshot, current)
                    snapshot = current
                    next_scan = time.monotonic() + self.interval
                    if changed and not restarting:
                        self.log.info("reloading", changed=changed[:5], count=len(changed))
                        restarting = True
                        if process is not None and process.poll() is None:
                            process.send_signal(signal.SIGTERM)
                time.sleep(_POLL)

    def _start(self) -> subprocess.Popen[bytes]:
        process = _spawn(self.argv)
        self.log.info("worker_process_started", child_pid=process.pid)
        return process
