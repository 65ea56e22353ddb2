"""The runner's slots: reads and claims take only free slots; the reclaim loop goes first."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from leanmq_async.worker.state import RECLAIM_BATCH, Slots

pytestmark = pytest.mark.anyio


async def test_a_reservation_takes_every_free_slot_and_a_release_gives_them_back() -> None:
    slots = Slots(4, anyio.Event())
    assert await slots.reserve() == 4
    assert slots.free == 0
    slots.release(1)
    slots.release(0)
    assert await slots.reserve() == 1


async def test_a_batch_reservation_lingers_for_more_then_takes_what_is_free() -> None:
    slots = Slots(4, anyio.Event())
    slots.free = 0
    got: list[int] = []
    async with anyio.create_task_group() as tg:

        async def fetch() -> None:
            got.append(await slots.reserve(batch=4))

        tg.start_soon(fetch)
        await anyio.lowlevel.checkpoint()
        slots.release(1)  # wakes it: it lingers for the batch
        await anyio.lowlevel.checkpoint()
        slots.release(2)
    assert got == [3]  # the linger ended with 3 of the 4 wanted


async def test_the_reclaim_loop_is_served_before_the_fetch_loop() -> None:
    slots = Slots(4, anyio.Event())
    slots.free = 0
    got: list[tuple[str, int]] = []
    async with anyio.create_task_group() as tg:

        async def reserve(name: str, reclaiming: bool) -> None:
            got.append((name, await slots.reserve(reclaiming=reclaiming)))

        tg.start_soon(reserve, "fetch", False)
        await anyio.lowlevel.checkpoint()
        tg.start_soon(reserve, "reclaim", True)
        await anyio.lowlevel.checkpoint()
        slots.release(2)
        await anyio.sleep(0.05)
        assert got == [("reclaim", 2)]  # the fetch loop waits on
        slots.release(1)
    assert got == [("reclaim", 2), ("fetch", 1)]


async def test_stopping_ends_every_waiting_reservation_with_0() -> None:
    stop = anyio.Event()
    slots = Slots(2, stop)
    slots.free = 0
    got: list[int] = []
    async with anyio.create_task_group() as tg:

        async def reserve(reclaiming: bool) -> None:
            got.append(await slots.reserve(reclaiming=reclaiming, batch=2))

        tg.start_soon(reserve, False)
        tg.start_soon(reserve, True)
        await anyio.lowlevel.checkpoint()
        stop.set()
        slots.wake()
    assert got == [0, 0]
    assert await slots.reserve() == 0  # and every later one


async def test_a_reclaim_step_reserves_at_most_one_batch() -> None:
    slots = Slots(RECLAIM_BATCH + 5, anyio.Event())
    assert await slots.reserve_batch(reclaiming=True) == RECLAIM_BATCH
    assert slots.free == 5
