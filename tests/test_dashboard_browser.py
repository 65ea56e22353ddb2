"""The dashboard in a real browser: sign-in, queue row, DLQ message with its reason and
traceback, paging, workers and in-flight counts, issues in step with the table, requeue.

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
from leanmq_async.testkit import run_until_idle

CHROMIUM = os.environ.get("LEANMQ_CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.async_api import Dialog, Page, Request, async_playwright, expect
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


async def sign_in(page: Page, admin_url: str, *, with_url_token: bool = False) -> None:
    """Open the dashboard and sign in through its prompt (the token never in the URL)."""
    await page.goto(f"{admin_url}/?token={TOKEN}" if with_url_token else f"{admin_url}/")
    await expect(page.locator("#login-section")).to_be_visible(timeout=15_000)
    assert "token" not in page.url
    await page.locator("#token-input").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#login-section")).to_be_hidden(timeout=15_000)


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
            authorized: list[str] = []

            def record(request: Request) -> None:
                if request.resource_type != "fetch":
                    return  # the page itself: opened with ?token= on purpose
                assert "token=" not in request.url
                if request.url.endswith("/stats"):
                    authorized.append(request.headers.get("authorization", ""))

            page.on("request", record)
            await sign_in(page, admin_url, with_url_token=True)

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
            assert f"Bearer {TOKEN}" in authorized
        finally:
            await browser.close()

    assert dialogs == [f"Requeue message {dead_id} to orders?"]
    assert await raw.xlen(dlq.stream) == 0
    back = await queue.get_messages(count=10)
    assert [(m.message_id, m.data) for m in back] == [("order-42", {"order": 42})]


async def test_dashboard_pages_dead_letters_shows_tracebacks_workers_and_issues_in_step(
    mq: LeanMQ, raw: aioredis.Redis, admin_url: str
) -> None:
    queue, dlq = await mq.create_queue_pair("orders")

    @queue.handler(max_retries=0)
    async def handle(order: dict[str, int]) -> None:
        raise ValueError(f"no stock for order {order['n']}")

    await queue.send_messages([{"n": n} for n in range(35)])
    report = await run_until_idle(mq)
    assert len(report.dead_lettered) == 35
    await queue.send_messages([{"n": 100}, {"n": 101}])
    in_flight = await queue.get_messages(count=2, consumer_id="worker-a")
    assert len(in_flight) == 2
    ids = [sid.decode() for sid, _ in await raw.xrange(dlq.stream)]

    async def accept(dialog: Dialog) -> None:
        await dialog.accept()

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            page.on("dialog", accept)
            await sign_in(page, admin_url)

            row = page.locator("#queues tr.queue", has_text="orders")
            await expect(row).to_be_visible(timeout=15_000)
            await expect(row.locator("td.in-flight")).to_have_text("2")
            worker = page.locator("#workers tr.worker", has_text="worker-a")
            await expect(worker).to_be_visible()
            await expect(worker).to_contain_text("orders-group")
            assert (await worker.locator("td").nth(3).text_content()) == "2"
            issues = page.locator("#issues")
            await expect(issues).to_contain_text("dead-letter", timeout=15_000)

            await row.click()
            rows = page.locator("#dlq tr")
            await expect(rows).to_have_count(30, timeout=15_000)
            await expect(rows.first).to_contain_text(ids[0])
            await expect(page.locator("#dlq-page")).to_have_text(
                "dead letters 1\u201330 of 35 (oldest first)"  # an en dash
            )
            first = rows.first
            await first.locator("summary", has_text="traceback").click()
            await expect(first.locator("details pre")).to_contain_text("no stock for order 0")
            await expect(first.locator("details pre")).to_contain_text("in handle")

            await page.get_by_role("button", name="Next page").click()
            await expect(rows).to_have_count(5, timeout=15_000)
            await expect(rows.first).to_contain_text(ids[30])
            await expect(rows.last).to_contain_text(ids[34])
            await expect(page.get_by_role("button", name="Next page")).to_be_disabled()
            await page.get_by_role("button", name="First page").click()
            await expect(rows.first).to_contain_text(ids[0], timeout=15_000)

            await page.get_by_role("button", name="Requeue all").click()
            dlq_cell = row.locator("td").nth(6)
            await expect(dlq_cell).to_have_text("0", timeout=15_000)
            # Drawn in the same refresh: once the table shows an empty DLQ, no issue is left.
            assert await page.locator("#issues-section").is_hidden()
            assert await issues.text_content() == ""
        finally:
            await browser.close()
    assert await raw.xlen(dlq.stream) == 0
