"""The dashboard in a real browser: queue row, DLQ message with its reason, requeue.

Runs ``leanmq serve`` on a free loopback port and drives the system Chromium with
Playwright (``playwright install`` is never needed: the browser is /usr/bin/chromium).
Skipped when Playwright or Chromium is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ
from leanmq_async.testing import RedisServer, free_port

CHROMIUM = os.environ.get("LEANMQ_CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.async_api import Dialog, async_playwright, expect
except ImportError:
    pytest.skip(
        "playwright is not installed (pip install playwright; no `playwright install` needed)",
        allow_module_level=True,
    )
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LEANMQ_CHROMIUM)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.anyio

TOKEN = "dash-token"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def admin_url(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[str]:
    """``leanmq serve`` in a subprocess; its base URL once it answers."""
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    cmd = [
        sys.executable,
        "-c",
        "from leanmq_async.ops.admin_cli import main; main()",
        "--url",
        redis_server.url,
        "--prefix",
        prefix,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--token",
        TOKEN,
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"leanmq serve exited: {(tmp_path / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(url + "/", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"leanmq serve never answered: {(tmp_path / 'serve.log').read_text()}"
                    )
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_dashboard_requeues_a_dead_letter(
    mq: LeanMQ, raw: aioredis.Redis, admin_url: str
) -> None:
    queue, dlq = await mq.create_queue_pair("orders")
    await queue.send_message({"order": 42}, message_id="order-42")
    (msg,) = await queue.get_messages(consumer_id="crashed")
    assert (await queue.move_to_dlq([msg.id], "invalid foreign key 42")).moved == [msg.id]
    ((dead_id, _),) = await raw.xrange(dlq.stream)
    dead_id = dead_id.decode()

    dialogs: list[str] = []

    async def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            page.on("dialog", accept)
            await page.goto(f"{admin_url}/?token={TOKEN}")

            row = page.locator("#queues tr.queue", has_text="orders")
            await expect(row).to_be_visible(timeout=15_000)
            await expect(page.locator("#status")).not_to_have_text("…", timeout=15_000)
            await row.click()

            dead = page.locator("#dlq tr", has_text=dead_id)
            await expect(dead).to_be_visible(timeout=15_000)
            await expect(dead).to_contain_text("invalid foreign key 42")
            await expect(dead).to_contain_text('"order":42')

            await dead.get_by_role("button", name="Requeue").click()
            await expect(page.locator("#dlq tr", has_text=dead_id)).to_have_count(0, timeout=15_000)
            await expect(page.locator("#dlq-note")).to_have_text("empty", timeout=15_000)
            assert await page.locator("#error").text_content() == ""
        finally:
            await browser.close()

    assert dialogs == [f"Requeue message {dead_id} to orders?"]
    assert await raw.xlen(dlq.stream) == 0
    back = await queue.get_messages(count=10)
    assert [(m.message_id, m.data) for m in back] == [("order-42", {"order": 42})]
