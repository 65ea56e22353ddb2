"""Signal capture for the CLI, the only place leanmq_async installs signal handlers.

The :class:`~leanmq_async.worker.Worker` never touches signals, so it can be embedded in
any application. ``leanmq-worker`` runs a :class:`SignalCapture` next to the worker:

* the first SIGINT or SIGTERM calls ``on_graceful`` (the CLI calls ``worker.stop()``:
  stop fetching, give in-flight handlers the grace period, then cancel them);
* any later one calls ``on_force`` (the CLI cancels the handlers at once and exits
  non-zero; their messages stay pending for another worker).

When the capture ends, the handlers that were installed before it are put back, so
calling the CLI's ``main()`` from another program leaves that program's handlers alone.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence

import anyio
from anyio.abc import TaskStatus

from leanmq_async._log import get_logger

__all__ = ["HANDLED_SIGNALS", "SignalCapture"]

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

SignalCallback = Callable[[signal.Signals], None]


class SignalCapture:
    """Route SIGINT/SIGTERM to callbacks while :meth:`run` runs (in the main thread)."""

    def __init__(
        self,
        on_graceful: SignalCallback,
        on_force: SignalCallback,
        signals: Sequence[signal.Signals] = HANDLED_SIGNALS,
    ) -> None:
        self.on_graceful = on_graceful
        self.on_force = on_force
        self.signals = tuple(signals)
        self.received: list[signal.Signals] = []

    def __repr__(self) -> str:
        names = [s.name for s in self.received]
        return f"<SignalCapture signals={[s.name for s in self.signals]} received={names}>"

    @property
    def forced(self) -> signal.Signals | None:
        """The signal that asked for an immediate exit, if one did."""
        return self.received[1] if len(self.received) > 1 else None

    def deliver(self, signum: signal.Signals) -> None:
        """Act on one signal (the first is graceful, the next ones forceful)."""
        self.received.append(signum)
        if len(self.received) == 1:
            self.on_graceful(signum)
        else:
            self.on_force(signum)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Capture the signals until cancelled, then restore the previous handlers."""
        previous = {sig: signal.getsignal(sig) for sig in self.signals}
        try:
            with anyio.open_signal_receiver(*self.signals) as receiver:
                task_status.started()
                async for signum in receiver:
                    self.deliver(signum)
        except NotImplementedError:  # pragma: no cover - event loops without signal support
            get_logger("leanmq_async.worker").warning(
                "signals_unavailable",
                detail="this event loop cannot capture signals; Ctrl+C stops the worker "
                "without a grace period",
            )
            task_status.started()
            await anyio.sleep_forever()
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: installed outside Python, cannot be restored
                    signal.signal(sig, handler)
