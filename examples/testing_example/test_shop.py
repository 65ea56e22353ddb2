"""How a user tests an app: send through the app, run the worker until idle, assert."""

from __future__ import annotations

import pytest
import shop

from leanmq_async import LeanMQ
from leanmq_async.testkit import run_until_idle

pytestmark = pytest.mark.anyio


async def test_an_order_is_shipped(app_mq: LeanMQ) -> None:
    message_id = await shop.place_order(1, "book", 2)
    report = await run_until_idle(app_mq)
    assert report.handled == [message_id]
    assert shop.shipped == [1]


async def test_a_flaky_dependency_is_retried_without_waiting(app_mq: LeanMQ) -> None:
    message_id = await shop.place_order(2, "flaky", 1)
    report = await run_until_idle(app_mq)
    assert report.retried == [message_id, message_id]
    assert report.handled == [message_id]
    assert shop.shipped == [2]


async def test_a_bad_order_is_dead_lettered(app_mq: LeanMQ) -> None:
    message_id = await shop.place_order(3, "book", 0)
    report = await run_until_idle(app_mq)
    assert "quantity must be positive" in report.dead_lettered[message_id]
    (dead,) = await shop.orders.dead_letter_queue().peek_messages()
    assert dead.message_id == message_id
    assert shop.shipped == []


async def test_each_test_starts_empty(leanmq: LeanMQ) -> None:
    assert await leanmq.redis.keys("*") == []
