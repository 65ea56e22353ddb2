"""LeanMQWebhook: routes on queues, sending with the path header, retries and dead letters."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from leanmq_async import LeanMQ, Message
from leanmq_async.exceptions import ConfigurationError
from leanmq_async.testing import RedisServer
from leanmq_async.webhook import (
    PATH_HEADER,
    LeanMQWebhook,
    normalize_path,
    path_to_queue_name,
)

pytestmark = pytest.mark.anyio


def fast_retry(_attempt: int) -> float:
    return 0.01


async def run_burst(webhook: LeanMQWebhook) -> None:
    with anyio.fail_after(20):
        await webhook.run_service(burst=True, block_ms=50)


# -- paths, without Redis --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "normalized", "queue"),
    [
        ("/order/status/", "/order/status", "order_status"),
        ("order/status", "/order/status", "order_status"),
        ("/order/status", "/order/status", "order_status"),
        ("orders", "/orders", "orders"),
        ("/orders//", "/orders", "orders"),
        ("/user-events/v1.2", "/user-events/v1.2", "user_events_v1_2"),
        ("/café", "/café", "caf_"),
    ],
)
def test_path_normalisation(path: str, normalized: str, queue: str) -> None:
    assert normalize_path(path) == normalized
    assert path_to_queue_name(path) == queue
    webhook = LeanMQWebhook(url="redis://127.0.0.1:1")
    assert webhook._normalize_path(path) == normalized
    assert webhook._path_to_queue_name(normalized) == queue
    assert webhook.queue(path).name == queue


@pytest.mark.parametrize("path", ["/", "", "//"])
def test_path_without_segment_is_refused(path: str) -> None:
    with pytest.raises(ConfigurationError, match="names no queue"):
        path_to_queue_name(path)


async def test_no_io_at_decoration() -> None:
    # Nothing listens on port 1: constructing and decorating must not touch Redis.
    webhook = LeanMQWebhook(url="redis://127.0.0.1:1", max_retries=7)

    @webhook.get("/order/status/")
    async def order_status(data: dict[str, Any]) -> None:
        pass

    @webhook.get("payments", max_retries=2, concurrency=3)
    async def payments(data: dict[str, Any]) -> None:
        pass

    assert [r.path for r in webhook.routes] == ["/order/status", "/payments"]
    assert [r.queue.name for r in webhook.routes] == ["order_status", "payments"]
    assert webhook.routes[0].handler is order_status  # the function is returned unchanged
    (opts,) = webhook.queue("/order/status").handler_options()
    assert opts.max_retries == 7  # the constructor's default
    (opts,) = webhook.queue("/payments").handler_options()
    assert (opts.max_retries, opts.concurrency) == (2, 3)  # the route's own options win
    assert webhook.mq.prefix == "webhook:"
    webhook.worker()  # building a worker does no I/O either
    await webhook.aclose()


def test_bad_registrations_are_refused_at_decoration() -> None:
    webhook = LeanMQWebhook(url="redis://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="unknown handler option"):
        webhook.get("/x", retries=3)
    with pytest.raises(ConfigurationError, match="unknown handler option"):
        LeanMQWebhook(url="redis://127.0.0.1:1", serializer="msgpack")
    with pytest.raises(ConfigurationError, match="max_retries"):
        webhook.get("/x", max_retries=-1)

    with pytest.raises(ConfigurationError, match="async def"):

        @webhook.get("/x")  # type: ignore[type-var]
        def not_async(data: Any) -> None:
            pass

    @webhook.get("/a/b")
    async def a_b(data: Any) -> None:
        pass

    with pytest.raises(ConfigurationError, match="same queue"):
        webhook.get("/a_b")
    with pytest.raises(ConfigurationError, match="already has a handler"):

        @webhook.get("/a/b/")
        async def again(data: Any) -> None:
            pass

    # Fan-out: a second handler on the same path in another consumer group.
    @webhook.get("/a/b", group="audit")
    async def audit(data: Any) -> None:
        pass

    assert [r.path for r in webhook.routes] == ["/a/b", "/a/b"]


def test_worker_needs_routes() -> None:
    with pytest.raises(ConfigurationError, match="no webhook routes"):
        LeanMQWebhook(url="redis://127.0.0.1:1").worker()


async def test_connection_arguments(mq: LeanMQ, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEANMQ_URL", raising=False)  # it would win over redis_host & co.
    with pytest.raises(ConfigurationError, match="not both"):
        LeanMQWebhook("redis://127.0.0.1:1", mq=mq)
    with pytest.raises(ConfigurationError, match="not both"):
        LeanMQWebhook(mq=mq, redis_host="example")
    with pytest.raises(ConfigurationError, match="not both"):
        LeanMQWebhook("redis://127.0.0.1:1", redis_port=6380)
    with pytest.raises(ConfigurationError, match="differs"):
        LeanMQWebhook(mq=mq, prefix="other:")
    owned = LeanMQWebhook(redis_host="127.0.0.1", redis_port=1, redis_db=2, prefix="wh:")
    assert owned.mq.url == "redis://127.0.0.1:1/2"
    assert owned.mq.prefix == "wh:"
    await owned.aclose()


# -- with Redis ------------------------------------------------------------------------


class OrderStatus(msgspec.Struct):
    order_id: int
    status: str


async def test_handlers_get_the_data(mq: LeanMQ) -> None:
    webhook = LeanMQWebhook(mq=mq)
    plain: list[Any] = []
    typed: list[OrderStatus] = []
    messages: list[Message[Any]] = []

    @webhook.get("/events/")
    async def events(data: dict[str, Any]) -> None:
        plain.append(data)

    @webhook.get("/order/status")
    async def order_status(data: OrderStatus) -> None:
        typed.append(data)

    @webhook.get("/raw")
    async def raw(message: Message[Any]) -> None:
        messages.append(message)

    sid = await webhook.send("events", {"n": 1})
    assert isinstance(sid, str) and "-" in sid
    await webhook.send("/order/status/", {"order_id": 7, "status": "shipped"})
    await webhook.send("/raw", [1, 2], headers={"trace": "abc"}, message_id="m-1")
    await run_burst(webhook)

    # The handler gets exactly the data sent: no "_leanmq" key added (LeanMQ 0.2 did).
    assert plain == [{"n": 1}]
    assert typed == [OrderStatus(order_id=7, status="shipped")]
    (message,) = messages
    assert message.data == [1, 2]
    assert message.message_id == "m-1"
    assert message.headers == {"trace": "abc", PATH_HEADER: "/raw"}
    assert message.queue == "raw"


async def test_service_in_background(mq: LeanMQ) -> None:
    webhook = LeanMQWebhook(mq=mq)
    got: list[int] = []
    done = anyio.Event()

    @webhook.get("/numbers")
    async def numbers(data: int) -> None:
        got.append(data)
        if len(got) == 5:
            done.set()

    with anyio.fail_after(20):
        async with webhook.worker(block_ms=50) as worker:
            for i in range(5):
                await webhook.send("/numbers", i)
            await done.wait()
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert worker.stats.handled == 5

    # run_service runs until cancelled and reports when it reads its queues.
    got.clear()
    done = anyio.Event()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(lambda task_status: webhook.run_service(task_status=task_status))
            for i in range(5):
                await webhook.send("/numbers", i)
            await done.wait()
            tg.cancel_scope.cancel()
    assert sorted(got) == [0, 1, 2, 3, 4]


async def test_failure_is_retried_then_dead_lettered(mq: LeanMQ) -> None:
    webhook = LeanMQWebhook(mq=mq, backoff=fast_retry)
    attempts: dict[str, int] = {}

    @webhook.get("/flaky", max_retries=2)
    async def flaky(data: dict[str, Any]) -> None:
        key = data["key"]
        attempts[key] = attempts.get(key, 0) + 1
        if key == "always" or attempts[key] < 2:
            raise ValueError(f"boom {key}")

    ok_id = await webhook.send("/flaky", {"key": "once"})
    bad_id = await webhook.send("/flaky", {"key": "always"})
    dlq = webhook.queue("/flaky").dead_letter_queue()
    with anyio.fail_after(20):
        async with webhook.worker(block_ms=50):
            while True:  # until the message that always fails reaches the DLQ
                if await dlq.peek_messages() and attempts.get("once") == 2:
                    break
                await anyio.sleep(0.02)

    assert attempts == {"once": 2, "always": 3}  # first attempt + max_retries
    (dead,) = await dlq.peek_messages()
    assert dead.data == {"key": "always"}
    assert dead.headers[PATH_HEADER] == "/flaky"
    info = dead.dead_letter
    assert info is not None
    assert info.reason == "failed after 3 attempt(s): ValueError: boom always"
    assert info.error_type == "ValueError"
    assert info.attempts == 3
    assert info.source_queue == "flaky"
    assert ok_id != bad_id
    main = await webhook.queue("/flaky").get_info()
    assert main.pending_messages == 0


async def test_send_to_unregistered_path_still_enqueues(mq: LeanMQ) -> None:
    sender = LeanMQWebhook(mq=mq)
    sid = await sender.send("/billing/invoice/", {"invoice": 42})
    (waiting,) = await sender.queue("/billing/invoice").peek_messages()
    assert waiting.id == sid
    assert waiting.data == {"invoice": 42}
    assert waiting.headers == {PATH_HEADER: "/billing/invoice"}

    # Another service (another client, same prefix) registers the path later and gets it.
    async with LeanMQ(mq.url, prefix=mq.prefix) as other:
        receiver = LeanMQWebhook(mq=other)
        got: list[Any] = []

        @receiver.get("billing/invoice")
        async def invoice(data: Any) -> None:
            got.append(data)

        await run_burst(receiver)
    assert got == [{"invoice": 42}]


async def test_worker_runs_only_webhook_queues(mq: LeanMQ) -> None:
    webhook = LeanMQWebhook(mq=mq)
    other: list[Any] = []
    hooked: list[Any] = []

    @mq.queue("other").handler
    async def other_handler(data: Any) -> None:
        other.append(data)

    @webhook.get("/hooked")
    async def hooked_handler(data: Any) -> None:
        hooked.append(data)

    await mq.queue("other").send_message("o")
    await webhook.send("/hooked", "h")
    await run_burst(webhook)
    assert hooked == ["h"]
    assert other == []
    assert [h.queue.name for h in webhook.worker().handlers] == ["hooked"]


async def test_owned_client_is_closed_borrowed_is_not(
    redis_server: RedisServer, prefix: str, mq: LeanMQ
) -> None:
    async with LeanMQWebhook(redis_server.url, prefix=prefix) as owned:
        await owned.send("/x", 1)
        assert owned.mq.prefix == prefix
    assert owned.mq._closed

    async with LeanMQWebhook(mq=mq) as borrowed:
        await borrowed.send("/x", 2)
    assert not mq._closed
    assert [m.data for m in await mq.queue("x").peek_messages()] == [1, 2]
