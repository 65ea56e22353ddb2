"""Webhook-style calls between services with LeanMQWebhook (the async LeanMQ 0.2 webhook).

    python examples/webhook_service.py           # private redis-server, burst, then exit
    python examples/webhook_service.py --serve   # keep serving until Ctrl-C (or SIGTERM)
    python examples/webhook_service.py --url redis://localhost:6379/0   # or LEANMQ_URL=...

One service registers handlers for paths (``@webhook.get("/order/status/")``), others send
to those paths (``await webhook.send(...)``). A handler that raises is retried with
backoff, then the event is dead-lettered with the reason, in the path's dead-letter queue.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import uuid
from typing import Any

import anyio
import msgspec
import structlog

from leanmq_async import Message
from leanmq_async.testing import RedisServer
from leanmq_async.webhook import PATH_HEADER, LeanMQWebhook


def configure_logging(level: int = logging.INFO) -> None:
    """Render the library's events (stdlib logging + structlog) on the console."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.ExtraAdder(),
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f"),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class OrderStatus(msgspec.Struct):
    order_id: int
    status: str


def build_webhook(url: str, prefix: str) -> tuple[LeanMQWebhook, list[str]]:
    """The receiving service: three paths and their handlers (registering does no I/O)."""
    # Options given here apply to every route; a route can override them.
    webhook = LeanMQWebhook(url, prefix=prefix, max_retries=2, backoff=lambda n: 0.1 * n)
    log: list[str] = []

    @webhook.get("/order/status/")  # normalised to "/order/status", queue "order_status"
    async def order_status(event: OrderStatus) -> None:
        log.append(f"order {event.order_id} is {event.status}")

    @webhook.get("/payment/received", concurrency=2)
    async def payment_received(message: Message[dict[str, Any]]) -> None:
        data = message.data
        if data["amount"] < 0:
            raise ValueError(f"negative amount {data['amount']}")  # retried, then DLQ
        log.append(
            f"payment of {data['amount']} for order {data['order_id']} "
            f"(via {message.headers[PATH_HEADER]}, attempt {message.attempt})"
        )

    @webhook.get("/inventory/low", max_retries=0)  # no retries: the first error dead-letters
    async def inventory_low(data: dict[str, Any]) -> None:
        if data["sku"] == "unknown":
            raise LookupError("no such SKU")
        log.append(f"restock {data['sku']} (left: {data['left']})")

    return webhook, log


async def send_events(webhook: LeanMQWebhook) -> int:
    """What other services do: send to paths (they need no handlers of their own)."""
    sent = 0
    for i, status in enumerate(["paid", "packed", "shipped", "delivered"], start=1):
        await webhook.send("/order/status", {"order_id": i, "status": status})
        sent += 1
    for i, amount in enumerate([25, 40, -5, 12], start=1):
        await webhook.send("payment/received/", {"order_id": i, "amount": amount})
        sent += 1
    for sku, left in [("mug", 2), ("unknown", 0)]:
        await webhook.send("/inventory/low", {"sku": sku, "left": left})
        sent += 1
    await webhook.send("/order/status", {"order_id": "x"})  # invalid: fails validation
    return sent + 1


async def serve_until_signalled(webhook: LeanMQWebhook) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully (the application's job: the
    worker itself never installs signal handlers)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            await tg.start(webhook.run_service)
            print("serving; press Ctrl-C to stop", flush=True)
            async for signum in signals:
                print(f"got {signal.Signals(signum).name}: finishing in-flight handlers")
                tg.cancel_scope.cancel()  # cancelling the worker = a graceful stop
                break
    print("stopped")


async def run(url: str, prefix: str, serve: bool, cleanup: bool) -> None:
    webhook, log = build_webhook(url, prefix)
    async with webhook:
        print(f"routes: {', '.join(f'{r.path} -> {r.queue.name}' for r in webhook.routes)}")
        sent = await send_events(webhook)
        print(f"sent {sent} events\n")
        if serve:
            await serve_until_signalled(webhook)
            return
        with anyio.fail_after(30):
            await webhook.run_service(burst=True, block_ms=100)  # until nothing is left

        print("\nhandled:")
        for line in log:
            print(f"  {line}")
        print("\ndead-lettered:")
        for route in webhook.routes:
            for dead in await route.queue.dead_letter_queue().peek_messages(100):
                assert dead.dead_letter is not None
                print(f"  {route.path}: {dead.data} -> {dead.dead_letter.reason}")
        if cleanup:
            for route in webhook.routes:
                await webhook.mq.delete_queue(route.queue.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=os.environ.get("LEANMQ_URL"),
        help="Redis URL (default: $LEANMQ_URL, else a private redis-server started here)",
    )
    parser.add_argument("--prefix", default=os.environ.get("LEANMQ_PREFIX"))
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl-C")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING if args.quiet else logging.INFO)
    if args.url:
        # Someone else's Redis: a fresh prefix, and in burst mode our queues are deleted
        # at the end.
        prefix = args.prefix or f"webhook-demo-{uuid.uuid4().hex[:8]}:"
        anyio.run(run, args.url, prefix, args.serve, not args.serve)
        return 0
    with RedisServer() as server:  # a throwaway redis-server, stopped on exit
        print(f"started a private redis-server at {server.url}")
        anyio.run(run, server.url, args.prefix or "webhook:", args.serve, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
