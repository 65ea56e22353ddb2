"""Handing messages to a pool of processor tasks without a task switch per message."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

import anyio

__all__ = ["WorkQueue"]

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """A FIFO shared by a pool of processor tasks.

    A busy processor takes the next item without waiting, so a batch of quick messages
    costs no task switch per message (an anyio memory stream checkpoints on every
    receive). Idle processors are woken one at a time: a processor that takes an item
    while more are queued wakes one more, unless one is already on its way. Quick
    handlers are thus served by few tasks; slow (awaiting) handlers fan out to as many
    processors as there are items, one scheduling step each.
    Back-pressure is the caller's: it only reads as many messages as it has free slots.
    """

    __slots__ = ("_closed", "_idle", "_items", "_waking")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._idle: deque[anyio.Event] = deque()
        self._closed = False
        self._waking = 0

    def __len__(self) -> int:
        return len(self._items)

    def _wake_one(self) -> None:
        if self._idle and not self._waking:
            self._waking += 1
            self._idle.popleft().set()

    def put_many(self, items: Iterable[T]) -> None:
        self._items.extend(items)
        if self._items:
            self._wake_one()

    def close(self) -> None:
        """No more items: processors return once the queue is empty."""
        self._closed = True
        while self._idle:
            self._waking += 1
            self._idle.popleft().set()

    async def get(self) -> T | None:
        """The next item, waiting while there is none; None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            wakeup = anyio.Event()
            self._idle.append(wakeup)
            try:
                await wakeup.wait()
            finally:
                if wakeup.is_set():
                    self._waking -= 1
                else:  # cancelled while idle
                    self._idle.remove(wakeup)
        item = self._items.popleft()
        if self._items:
            self._wake_one()
        return item
