"""``leanmq-worker``: real subprocesses against a private redis-server.

The apps live in tests/cli_apps/ and read LEANMQ_URL and CLI_TEST_PREFIX from the
environment; their handler records each message it starts and finishes in Redis lists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from leanmq_async import LeanMQ, Queue
from leanmq_async.testing import RedisServer, free_port
from leanmq_async.worker import cli
from leanmq_async.worker.importer import AppImportError, import_from_string, resolve_target
from leanmq_async.worker.signals import SignalCapture

pytestmark = pytest.mark.anyio

APPS = Path(__file__).parent / "cli_apps"
TIMEOUT = 15.0


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "leanmq_async.worker.cli", *args]


class WorkerProcess:
    """A ``leanmq-worker`` subprocess whose output is collected by two threads."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            worker_command(*args),
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))  # noqa: PERF401 - read while the process runs

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The JSON log events on stderr so far (those named ``event`` matching ``match``)."""
        found = []
        for line in list(self.err):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if event is not None and record.get("event") != event:
                continue
            if all(record.get(k) == v for k, v in match.items()):
                found.append(record)
        return found

    async def wait_for_events(
        self, event: str, count: int = 1, *, running: bool = True, **match: Any
    ) -> list[dict[str, Any]]:
        """Wait for ``count`` such events (failing early if ``running`` and it exited)."""
        await wait_until(
            lambda: len(self.events(event, **match)) >= count, proc=self if running else None
        )
        return self.events(event, **match)

    async def wait(self, within: float = TIMEOUT, *, drain: bool = True) -> int:
        """The exit code; raise ``subprocess.TimeoutExpired`` after ``within`` seconds.

        ``drain``: also wait until all the output is read (until every process holding the
        pipes, children included, closed them).
        """
        await anyio.to_thread.run_sync(self.proc.wait, within)
        if drain:
            for t in self._threads:
                await anyio.to_thread.run_sync(t.join, 5)
        return self.proc.returncode

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stderr(self) -> str:
        return "\n".join(self.err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for t in self._threads:
            t.join(timeout=5)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


async def wait_until(
    condition: Callable[[], Any], within: float = TIMEOUT, proc: WorkerProcess | None = None
) -> None:
    try:
        with anyio.fail_after(within):
            while not await _value(condition()):
                if proc is not None and proc.proc.poll() is not None:
                    raise AssertionError(f"worker exited {proc.proc.returncode}:\n{proc.stderr()}")
                await anyio.sleep(0.02)
    except TimeoutError:
        detail = proc.stderr() if proc is not None else ""
        raise AssertionError(f"condition not met within {within}s\n{detail}") from None


async def _value(result: Any) -> Any:
    if hasattr(result, "__await__"):
        return await result
    return result


@pytest.fixture
def env(redis_server: RedisServer, prefix: str) -> dict[str, str]:
    environ = dict(os.environ)
    environ.pop("CLI_TEST_SLEEP", None)
    environ.update(LEANMQ_URL=redis_server.url, CLI_TEST_PREFIX=prefix, PYTHONUNBUFFERED="1")
    return environ


@pytest.fixture
def start(env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def run(*args: str, cwd: Path | None = None, **extra_env: str) -> WorkerProcess:
        proc = WorkerProcess(list(args), {**env, **extra_env}, cwd)
        started.append(proc)
        return proc

    yield run
    for proc in started:
        proc.close()


@pytest.fixture
async def orders(mq: LeanMQ) -> AsyncIterator[Queue]:
    queue, _ = await mq.create_queue_pair("orders")
    yield queue


async def group_info(raw: aioredis.Redis, queue: Queue) -> dict[str, Any]:
    (group,) = [
        g
        for g in await raw.xinfo_groups(queue.stream)
        if g["name"] == queue.consumer_group.encode()
    ]
    return dict(group)


async def done_records(raw: aioredis.Redis, prefix: str) -> list[tuple[int, str]]:
    records = [r.decode().split(":", 1) for r in await raw.lrange(f"{prefix}done", 0, -1)]
    return [(int(pid), sid) for pid, sid in records]


def app_args(target: str = "worker_app:mq") -> list[str]:
    return [target, "--app-dir", str(APPS)]


# -- command-line errors -------------------------------------------------------------------


async def test_bad_import_strings_exit_2_with_one_line(
    start: Callable[..., WorkerProcess],
) -> None:
    cases = {
        "worker_app": 'must be in the form "<module>:<attribute>"',
        "no_such_module_xyz:mq": 'could not import module "no_such_module_xyz"',
        "worker_app:missing": 'attribute "missing" not found in "worker_app"',
        "worker_app:not_a_client": "is of type int; expected a LeanMQ client, a Queue",
        "empty_app:mq": "no handlers registered on this client",
    }
    procs = {target: start(*app_args(target)) for target in cases}
    for target, proc in procs.items():
        assert await proc.wait() == 2, (target, proc.stderr())
        assert len(proc.err) == 1, (target, proc.err)  # one line, no traceback
        assert proc.err[0].startswith("leanmq-worker: error: ")
        assert cases[target] in proc.err[0], (target, proc.err)


@pytest.fixture
def in_process(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, prefix: str
) -> Iterator[None]:
    """Run ``cli.main`` in this process without touching its logging, sys.path or modules."""
    monkeypatch.setattr(cli, "configure_logging", lambda *a: None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("LEANMQ_URL", redis_server.url)
    monkeypatch.setenv("CLI_TEST_PREFIX", prefix)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.endswith("_app"):
            del sys.modules[name]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker_app:"], 'must be in the form "<module>:<attribute>"'),
        (["worker_app.py:mq"], 'name the module, not the file: "worker_app:mq"'),
        (["worker_app:mq.nope"], 'attribute "nope" not found in "worker_app:mq"'),
        (["worker_app:other"], "no handlers registered on the queues given"),
        (["worker_app:mq", "--reload", "--workers", "2"], "cannot be combined with --workers"),
    ],
)
def test_more_command_line_errors(
    in_process: None, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli.main([*args, "--app-dir", str(APPS)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("leanmq-worker: error: ") and message in line


def test_bad_app_dir_and_options(in_process: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["worker_app:mq", "--app-dir", str(APPS / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert cli.main(["worker_app:mq", "--concurrency", "0"]) == 2
    assert "argument --concurrency: must be >= 1" in capsys.readouterr().err


async def test_error_inside_the_app_shows_its_traceback(
    start: Callable[..., WorkerProcess],
) -> None:
    proc = start(*app_args("broken_app:mq"))
    assert await proc.wait() == 1
    text = proc.stderr()
    assert "Traceback" in text
    assert "No module named 'leanmq_cli_test_missing_dependency'" in text


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    usage = capsys.readouterr().out
    for option in (
        "--url",
        "--concurrency",
        "--grace-period",
        "--log-level",
        "--log-format",
        "--workers",
        "--reload",
        "--burst",
        "--check",
        "--app-dir",
        "exit codes",
    ):
        assert option in usage


def test_importer_resolves_clients_queues_and_lists(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, prefix: str
) -> None:
    monkeypatch.setenv("LEANMQ_URL", redis_server.url)
    monkeypatch.setenv("CLI_TEST_PREFIX", prefix)
    monkeypatch.syspath_prepend(str(APPS))
    monkeypatch.delitem(sys.modules, "worker_app", raising=False)
    try:
        mq, queues = resolve_target(import_from_string("worker_app:mq"), "worker_app:mq")
        assert queues is None and isinstance(mq, LeanMQ)
        mq2, queues = resolve_target(import_from_string("worker_app:orders"), "x")
        assert mq2 is mq and queues is not None and [q.name for q in queues] == ["orders"]
        _, queues = resolve_target(import_from_string("worker_app:both"), "x")
        assert queues is not None and [q.name for q in queues] == ["orders", "other"]
        with pytest.raises(AppImportError, match="list of Queues"):
            resolve_target([], "x")
    finally:
        sys.modules.pop("worker_app", None)


# -- running -------------------------------------------------------------------------------


async def test_burst_handles_everything_and_exits_0_with_json_logs(
    start: Callable[..., WorkerProcess], orders: Queue, raw: aioredis.Redis, prefix: str
) -> None:
    ids = await orders.send_messages([{"n": i} for i in range(30)])
    proc = start(*app_args(), "--burst", "--log-format", "json", "--log-level", "debug")
    assert await proc.wait() == 0, proc.stderr()
    assert sorted(sid for _, sid in await done_records(raw, prefix)) == sorted(ids)
    assert (await orders.get_info()).pending_messages == 0
    (started,) = proc.events("worker_started")
    assert started["queues"] == ["orders"]
    assert started["level"] == "info" and started["logger"] == "leanmq_async.worker"
    assert started["consumer"] and started["timestamp"]
    handled = proc.events("handled", queue="orders", group=orders.consumer_group)
    assert sorted(e["id"] for e in handled) == sorted(ids)
    assert proc.events("shutdown", phase="done", handled=30)
    assert all(json.loads(line) for line in proc.err)  # every line is a JSON object


async def test_console_logs_show_key_values(
    start: Callable[..., WorkerProcess], orders: Queue, raw: aioredis.Redis, prefix: str
) -> None:
    (sid,) = await orders.send_messages([{"n": 1}])
    proc = start(*app_args(), "--log-level", "debug", "--log-format", "console")
    await wait_until(lambda: raw.llen(f"{prefix}done"), proc=proc)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.stderr()
    (handled,) = [line for line in proc.err if " handled " in line]
    assert f"id={sid}" in handled and "queue=orders" in handled and "attempt=1" in handled
    assert any("worker_started" in line and "queues=['orders']" in line for line in proc.err)


async def test_sigterm_finishes_in_flight_and_reads_nothing_more(
    start: Callable[..., WorkerProcess], orders: Queue, raw: aioredis.Redis, prefix: str
) -> None:
    first = await orders.send_messages([{"n": i} for i in range(50)])
    proc = start(*app_args(), "--concurrency", "50", "--log-format", "json", CLI_TEST_SLEEP="1.0")
    await wait_until(lambda: _has(raw.llen(f"{prefix}started"), 50), proc=proc)
    proc.signal(signal.SIGTERM)
    await proc.wait_for_events("shutdown", phase="stop_fetching")
    later = await orders.send_messages([{"n": i} for i in range(50, 70)])
    assert await proc.wait() == 0, proc.stderr()
    assert sorted(sid for _, sid in await done_records(raw, prefix)) == sorted(first)
    group = await group_info(raw, orders)
    assert group["pending"] == 0
    assert group["last-delivered-id"].decode() == max(first, key=_sid_key)
    assert group["lag"] == len(later)  # the messages sent after the signal were never read
    assert await raw.xlen(orders.stream) == 70
    (signalled,) = proc.events("signal_received", action="graceful_stop", signal="SIGTERM")
    assert signalled["grace_period"] == 10.0


async def test_second_sigterm_exits_at_once_leaving_messages_pending(
    start: Callable[..., WorkerProcess], orders: Queue, raw: aioredis.Redis, prefix: str
) -> None:
    ids = await orders.send_messages([{"n": i} for i in range(5)])
    proc = start(*app_args(), "--grace-period", "60", "--log-format", "json", CLI_TEST_SLEEP="60")
    await wait_until(lambda: _has(raw.llen(f"{prefix}started"), 5), proc=proc)
    proc.signal(signal.SIGTERM)
    await proc.wait_for_events("shutdown", phase="stop_fetching")
    assert proc.proc.poll() is None  # in the grace period: the handlers sleep for 60 s
    proc.signal(signal.SIGTERM)
    assert await proc.wait(within=10) == 128 + signal.SIGTERM, proc.stderr()
    assert await raw.llen(f"{prefix}done") == 0
    group = await group_info(raw, orders)
    assert group["pending"] == len(ids)  # abandoned, not lost: another worker reclaims them
    (forced,) = proc.events("signal_received", action="exit_now")
    assert forced["cancelled"] == len(ids)


async def test_check_exit_codes(start: Callable[..., WorkerProcess]) -> None:
    up = start(*app_args(), "--check")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    down = start(*app_args(), "--check", "--url", closed)  # --url wins over the env's URL
    assert await up.wait() == 0, up.stderr()
    assert json.loads(up.out[-1]) == {"status": "ok", "redis": True}
    assert await down.wait() == 1, down.stderr()
    report = json.loads(down.out[-1])
    assert report["status"] == "critical" and report["redis"] is False
    assert "Traceback" not in down.stderr()


async def test_two_worker_processes_share_the_work_and_stop_on_sigterm(
    start: Callable[..., WorkerProcess], orders: Queue, raw: aioredis.Redis, prefix: str
) -> None:
    proc = start(
        *app_args(), "--workers", "2", "--concurrency", "5", "--log-format", "json",
        CLI_TEST_SLEEP="0.2",
    )  # fmt: skip
    started = await proc.wait_for_events("worker_started", count=2)
    children = {e["pid"] for e in started}
    assert len(children) == 2 and proc.pid not in children
    ids = await orders.send_messages([{"n": i} for i in range(40)])
    await wait_until(lambda: _has(raw.llen(f"{prefix}done"), 40), proc=proc)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.stderr()
    records = await done_records(raw, prefix)
    assert sorted(sid for _, sid in records) == sorted(ids)
    assert {pid for pid, _ in records} == children  # both processes handled messages
    assert {e["pid"] for e in proc.events("shutdown", phase="done")} == children
    assert [e["code"] for e in proc.events("worker_process_exited")] == [0, 0]
    assert (await orders.get_info()).pending_messages == 0


async def test_worker_processes_stop_when_their_parent_is_killed(
    start: Callable[..., WorkerProcess],
) -> None:
    proc = start(*app_args(), "--workers", "2", "--log-format", "json")
    children = {e["pid"] for e in await proc.wait_for_events("worker_started", count=2)}
    proc.signal(signal.SIGKILL)
    assert await proc.wait(drain=False) == -signal.SIGKILL
    # The children still write to the same stderr pipe: they notice and stop gracefully.
    orphaned = await proc.wait_for_events("parent_exited", count=2, running=False)
    assert {e["pid"] for e in orphaned} == children
    stopped = await proc.wait_for_events("shutdown", count=2, running=False, phase="done")
    assert {e["pid"] for e in stopped} == children


RELOAD_APP = """
import os
from leanmq_async import LeanMQ, Message

PREFIX = os.environ["CLI_TEST_PREFIX"]
mq = LeanMQ(os.environ["LEANMQ_URL"], prefix=PREFIX)

@mq.queue("orders").handler
async def handle(message: Message) -> None:
    await mq.redis.rpush(PREFIX + "done", f"{os.getpid()}:{VERSION}")

VERSION = "%s"
"""


async def test_reload_restarts_the_worker_when_code_changes(
    start: Callable[..., WorkerProcess],
    orders: Queue,
    raw: aioredis.Redis,
    prefix: str,
    tmp_path: Path,
) -> None:
    app = tmp_path / "reload_app.py"
    app.write_text(RELOAD_APP % "v1")
    proc = start("reload_app:mq", "--reload", "--log-format", "json", cwd=tmp_path)
    await proc.wait_for_events("worker_started")
    await orders.send_message({"n": 1})
    await wait_until(lambda: _has(raw.llen(f"{prefix}done"), 1), proc=proc)
    app.write_text(RELOAD_APP % "v2")
    stat = app.stat()
    os.utime(app, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    (reloading,) = await proc.wait_for_events("reloading")
    assert reloading["changed"] == [str(app.resolve())]
    await proc.wait_for_events("worker_started", count=2)
    await orders.send_message({"n": 2})
    await wait_until(lambda: _has(raw.llen(f"{prefix}done"), 2), proc=proc)
    (pid1, v1), (pid2, v2) = await done_records(raw, prefix)
    assert (v1, v2) == ("v1", "v2") and pid1 != pid2
    proc.signal(signal.SIGINT)
    assert await proc.wait() == 0, proc.stderr()


# -- signals, in process -------------------------------------------------------------------


async def test_signal_capture_graceful_then_force_and_restores_handlers() -> None:
    calls: list[tuple[str, signal.Signals]] = []

    def previous(signum: int, frame: object) -> None:
        calls.append(("previous", signal.Signals(signum)))

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        capture = SignalCapture(
            lambda s: calls.append(("graceful", s)),
            lambda s: calls.append(("force", s)),
            signals=(signal.SIGUSR1,),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(capture.run)
            for expected in (1, 2, 3):
                os.kill(os.getpid(), signal.SIGUSR1)
                await wait_until(lambda n=expected: len(calls) == n, within=5)
            tg.cancel_scope.cancel()
        assert [c[0] for c in calls] == ["graceful", "force", "force"]
        assert capture.forced == signal.SIGUSR1
        assert signal.getsignal(signal.SIGUSR1) is previous  # put back
    finally:
        signal.signal(signal.SIGUSR1, old)


def _sid_key(sid: str) -> tuple[int, int]:
    ms, seq = sid.split("-")
    return int(ms), int(seq)


async def _has(count: Any, n: int) -> bool:
    return int(await count) >= n
