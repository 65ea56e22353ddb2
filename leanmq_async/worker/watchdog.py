"""The loop watchdog: tells when something blocks the event loop, and which handler.

A handler that calls blocking code (``time.sleep``, a sync HTTP client, heavy CPU work)
stops every task of the worker: no lease is extended, no message started, no ack sent.
Past the lease, other workers reclaim and run those messages again.

A heartbeat task ticks every ``interval`` seconds; a daemon thread checks the last tick.
When the loop has not ticked for ``threshold`` seconds the thread logs ``loop_blocked``
(warning) once, with how long so far, the handler found on the loop thread's stack (and
the line it is at), and the handlers holding messages. When the loop comes back the
heartbeat logs ``loop_unblocked`` (warning) with the block's whole duration.
The worker starts it and stops it; the thread is joined when it stops.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
from collections.abc import Sequence
from types import CodeType, FrameType
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from leanmq_async._log import get_logger

if TYPE_CHECKING:
    from leanmq_async.worker.runner import HandlerRunner

__all__ = ["LoopWatchdog"]

# Heartbeat period, and the longest the thread sleeps between checks.
_TICK = 0.1


class LoopWatchdog:
    """Watches one event loop from a daemon thread; see the module docstring."""

    def __init__(self, runners: Sequence[HandlerRunner], threshold: float) -> None:
        self.runners = tuple(runners)
        self.threshold = threshold
        self._codes: dict[CodeType, str] = {}
        for runner in self.runners:
            code = getattr(inspect.unwrap(runner.handler.func), "__code__", None)
            if isinstance(code, CodeType):
                self._codes[code] = runner.handler.name
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._reported = False  # the current block was logged (by the thread)
        self._loop_thread = 0
        self.blocks = 0
        self.log = get_logger("leanmq_async.worker")

    def __repr__(self) -> str:
        return f"<LoopWatchdog threshold={self.threshold}s blocks={self.blocks}>"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled; the watching thread runs meanwhile and is joined at the end."""
        self._loop_thread = threading.get_ident()
        self._last = time.monotonic()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(stop,), name="leanmq-loop-watchdog", daemon=True
        )
        thread.start()
        try:
            task_status.started()
            while True:
                await anyio.sleep(_TICK)
                self._tick()
        finally:
            stop.set()
            thread.join()  # wakes at once: stop.wait() returns when set

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            previous, self._last = self._last, now
            reported, self._reported = self._reported, False
        if reported:
            self.log.warning(
                "loop_unblocked",
                duration=round(now - previous, 3),
                in_flight=self._in_flight(),
            )

    def _watch(self, stop: threading.Event) -> None:
        period = min(_TICK, self.threshold / 4)
        while not stop.wait(period):
            with self._lock:
                blocked_for = time.monotonic() - self._last
                report = blocked_for >= self.threshold and not self._reported
                if report:
                    self._reported = True
            if report:
                self.blocks += 1
                handler, where = self._culprit()
                self.log.warning(
                    "loop_blocked",
                    blocked_for=round(blocked_for, 3),
                    handler=handler,
                    where=where,
                    in_flight=self._in_flight(),
                    detail="the event loop is blocked (blocking call in an async handler?): "
                    "leases are not extended and other workers may reclaim its messages; "
                    "use `await anyio.to_thread.run_sync(...)` for blocking work",
                )

    def _in_flight(self) -> dict[str, int]:
        """Messages held per handler (read from this thread: a len() of a set)."""
        return {r.handler.name: r.in_flight for r in self.runners if r.in_flight}

    def _culprit(self) -> tuple[str | None, str | None]:
        """The handler on the loop thread's stack, and the innermost Python line there."""
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        where: str | None = None
        if frame is not None:
            where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        while frame is not None:
            name = self._codes.get(frame.f_code)
            if name is not None:
                return name, where
            frame = frame.f_back
        return None, where
