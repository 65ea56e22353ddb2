"""leanmq_async in one file: typed handlers, retries, a dead-letter queue, a burst worker.

    python examples/demo.py                  # starts a private redis-server (needs it on PATH)
    python examples/demo.py --url redis://localhost:6379/0   # or LEANMQ_URL=...

It sends 20 messages to two queues, runs a worker in burst mode (it stops when nothing is
left, retries included), then prints what was handled and what was dead-lettered, and why.
Against your own Redis it works under a fresh prefix (LEANMQ_PREFIX to choose one) and
deletes its queues at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections import defaultdict

import anyio
import msgspec
import structlog

from leanmq_async import LeanMQ, Message
from leanmq_async.testing import RedisServer


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


class Order(msgspec.Struct):
    """The payload of the "orders" queue: the handler gets it validated."""

    order_id: int
    item: str
    quantity: int = 1


class Email(msgspec.Struct):
    to: str
    subject: str


async def demo(url: str, prefix: str, cleanup: bool) -> None:
    mq = LeanMQ(url, prefix=prefix)
    orders = mq.queue("orders")  # no I/O: the worker creates streams and groups
    emails = mq.queue("emails")
    handled: dict[str, list[str]] = defaultdict(list)

    @orders.handler(concurrency=5)
    async def handle_order(order: Order) -> None:
        await anyio.sleep(0.01)  # pretend to work
        handled["orders"].append(f"#{order.order_id} {order.quantity} x {order.item}")

    @emails.handler(max_retries=2, backoff=lambda attempt: 0.1 * attempt)
    async def send_email(message: Message[Email]) -> None:
        email = message.data
        if email.to.endswith(".invalid"):
            raise ConnectionRefusedError(f"no mail server for {email.to}")  # fails every time
        if message.attempt == 1 and email.subject.startswith("Flaky"):
            raise TimeoutError("SMTP timeout")  # fails once, the retry succeeds
        handled["emails"].append(f"{email.to}: {email.subject} (attempt {message.attempt})")

    async with mq:
        items = ["book", "lamp", "mug", "pen", "desk", "chair"]
        for i in range(1, 12):
            await orders.send_message(Order(order_id=i, item=items[i % len(items)], quantity=i))
        await orders.send_message({"order_id": "twelve", "item": "typo"})  # fails validation
        recipients = ["ada@example.com", "bob@example.com", "eve@example.invalid", "kim@x.org"]
        for i in range(8):
            subject = ("Flaky " if i % 3 == 1 else "") + f"Your order #{i + 1}"
            await emails.send_message(Email(to=recipients[i % len(recipients)], subject=subject))
        print("sent 20 messages to 'orders' and 'emails'\n")

        worker = mq.worker(burst=True, block_ms=100)
        with anyio.fail_after(30):
            await worker.serve()  # returns once everything, retries included, is settled

        print()
        for name, lines in sorted(handled.items()):
            print(f"handled from {name!r} ({len(lines)}):")
            for line in lines:
                print(f"  {line}")
        print("\ndead-lettered:")
        for queue in (orders, emails):
            for dead in await queue.dead_letter_queue().peek_messages(100):
                assert dead.dead_letter is not None
                print(f"  {queue.name}: {dead.data} -> {dead.dead_letter.reason}")
        stats = worker.stats
        print(
            f"\nworker: {stats.handled} handled, {stats.retried} retried, "
            f"{stats.dead_lettered} dead-lettered"
        )
        if cleanup:
            for queue in (orders, emails):
                await mq.delete_queue(queue.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=os.environ.get("LEANMQ_URL"),
        help="Redis URL (default: $LEANMQ_URL, else a private redis-server started here)",
    )
    parser.add_argument("--prefix", default=os.environ.get("LEANMQ_PREFIX"))
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING if args.quiet else logging.INFO)

    if args.url:
        # Someone else's Redis: a fresh prefix, and our queues are deleted at the end.
        prefix = args.prefix or f"demo-{uuid.uuid4().hex[:8]}:"
        anyio.run(demo, args.url, prefix, True)
        return 0
    with RedisServer() as server:  # a throwaway redis-server, stopped on exit
        print(f"started a private redis-server at {server.url}")
        anyio.run(demo, server.url, args.prefix or "demo:", False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
