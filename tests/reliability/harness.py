"""The fault-injection harness: producer bookkeeping, the checker, apps, log capture.

* every test message carries a unique id in its payload (``{"mid": ...}``);
* :class:`Producer` records what was attempted and what Redis confirmed (a stream id);
* handlers record every execution in a :class:`~tests.reliability.ledger.Ledger` (a file
  outside the Redis under test);
* :func:`check` compares the two: ``lost`` (confirmed, never handled), ``duplicated``
  (handled more than once, with counts) and ``unexpected`` (handled, never sent);
  :func:`assert_settled` checks that every group of the streams holds nothing pending;
* :func:`report` prints one ``reliability case N: ...`` line and keeps it for the
  session summary printed by ``tests/reliability/conftest.py``.
"""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import redis.asyncio as aioredis

from leanmq_async import ConnectionSettings, LeanMQ, LeanMQConnectionError, Message, Queue
from tests.reliability.ledger import Ledger
from tests.worker_apps.common import app_env, log_tail, wait_until

__all__ = [
    "ROOT",
    "SUMMARY",
    "Apps",
    "EventLog",
    "Ledger",
    "Producer",
    "Report",
    "app_env",
    "assert_settled",
    "capture_events",
    "check",
    "commandstats",
    "consumer_pending",
    "dlq_entries",
    "group_pending",
    "ledger_client",
    "log_tail",
    "note",
    "pending_ids",
    "redis_ms",
    "report",
    "settled",
    "sleep_until_redis_time_passes",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]
APP_PACKAGE = "tests.reliability.apps"
SUMMARY: list[str] = []
"""The lines printed by :func:`report`, shown again at the end of the session."""

_counter = itertools.count()


# -- producing ---------------------------------------------------------------------------


@dataclass
class Producer:
    """Sends ``{"mid": ...}`` payloads and remembers which ones Redis confirmed."""

    queue: Queue
    tag: str = "m"
    attempted: list[str] = field(default_factory=list)
    confirmed: dict[str, str] = field(default_factory=dict)  # mid -> stream id
    failed: int = 0

    def new_mid(self) -> str:
        return f"{self.tag}-{next(_counter):07d}"

    async def send(self, n: int, *, batch: int = 500, **options: Any) -> list[str]:
        """Send ``n`` messages in atomic batches; return the confirmed mids."""
        out: list[str] = []
        for start in range(0, n, batch):
            mids = [self.new_mid() for _ in range(min(batch, n - start))]
            self.attempted += mids
            ids = await self.queue.send_messages([{"mid": m} for m in mids], **options)
            for mid, sid in zip(mids, ids, strict=True):
                self.confirmed[mid] = sid
            out += mids
        return out

    async def send_one(self, mid: str | None = None, **options: Any) -> str | None:
        """Send one message; its mid if confirmed, None if Redis could not be reached."""
        mid = mid or self.new_mid()
        self.attempted.append(mid)
        try:
            sid = await self.queue.send_message({"mid": mid}, **options)
        except LeanMQConnectionError:
            self.failed += 1
            return None
        self.confirmed[mid] = sid
        return mid

    async def send_raw(self, raw: aioredis.Redis, fields: Mapping[bytes, bytes]) -> str:
        """XADD ``fields`` as they are (entries no producer of ours would write)."""
        sid = await raw.xadd(self.queue.stream, cast(Any, dict(fields)))
        return sid.decode() if isinstance(sid, bytes) else str(sid)


# -- checking ----------------------------------------------------------------------------


@dataclass
class Report:
    """What happened to the confirmed messages of one case."""

    case: int
    confirmed: int
    handled: int
    lost: list[str]
    duplicated: dict[str, int]
    unexpected: list[str]

    @property
    def duplicates(self) -> int:
        """Extra executions in all (a message handled 3 times counts 2)."""
        return sum(n - 1 for n in self.duplicated.values())

    def line(self, **extra: Any) -> str:
        parts = [
            f"reliability case {self.case}: confirmed={self.confirmed}",
            f"handled={self.handled}",
            f"lost={len(self.lost)}",
            f"duplicated={len(self.duplicated)}",
        ]
        if self.duplicated:
            runs = Counter(self.duplicated.values())
            hist = ",".join(f"{n}x{k}" for k, n in sorted(runs.items()))  # 3x2: 3 ran twice
            parts.append(f"duplicate_counts={hist} extra_executions={self.duplicates}")
        if self.unexpected:
            parts.append(f"unexpected={len(self.unexpected)}")
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)


def check(
    case: int,
    confirmed: Iterable[str],
    ledger: Ledger,
    *,
    attempted: Iterable[str] | None = None,
    ev: str = "done",
) -> Report:
    """Compare what Redis confirmed with what the handlers recorded (``ev`` events).

    ``unexpected``: handled but never attempted (``attempted`` defaults to ``confirmed``;
    a send whose reply was lost may be handled without having been confirmed).
    """
    want = set(confirmed)
    tried = set(attempted) if attempted is not None else want
    counts = ledger.counts(ev)
    handled = set(counts)
    return Report(
        case=case,
        confirmed=len(want),
        handled=len(handled & want),
        lost=sorted(want - handled),
        duplicated={m: n for m, n in sorted(counts.items()) if n > 1},
        unexpected=sorted(handled - tried - want),
    )


def note(line: str) -> None:
    """Print a ``reliability case N: ...`` line and keep it for the session summary."""
    print(line)  # noqa: T201 - the suite's output is these lines
    SUMMARY.append(line)


def report(rep: Report, **extra: Any) -> Report:
    """Print the case's line (``pytest -s`` shows it) and keep it for the session summary;
    then assert nothing confirmed was lost and nothing unknown was handled."""
    note(rep.line(**extra))
    assert not rep.lost, f"case {rep.case}: {len(rep.lost)} lost, e.g. {rep.lost[:10]}"
    assert not rep.unexpected, f"case {rep.case}: unexpected {rep.unexpected[:10]}"
    return rep


async def group_pending(raw: aioredis.Redis, stream: str) -> dict[str, int]:
    """``{group: pending}`` of every group of ``stream`` ({} if the stream is missing)."""
    try:
        groups = await raw.xinfo_groups(stream)
    except aioredis.ResponseError:
        return {}
    return {g["name"].decode(): int(g["pending"]) for g in groups}


async def assert_settled(raw: aioredis.Redis, *queues: Queue, delayed: bool = True) -> None:
    """Every group of each queue's stream and DLQ has an empty pending list, and (with
    ``delayed``) no retry or delayed message is still scheduled."""
    for queue in queues:
        for stream in (queue.stream, queue.keys.dlq):
            pending = await group_pending(raw, stream)
            assert all(n == 0 for n in pending.values()), f"pending on {stream}: {pending}"
        if delayed:
            assert await raw.zcard(queue.keys.delayed) == 0, "retries still scheduled"


async def settled(raw: aioredis.Redis, queue: Queue) -> bool:
    """True when every group of ``queue`` has read everything and holds nothing."""
    try:
        groups = await raw.xinfo_groups(queue.stream)
    except aioredis.ResponseError:
        return False
    return bool(groups) and all(int(g["pending"]) == 0 and g["lag"] == 0 for g in groups)


async def dlq_entries(raw: aioredis.Redis, queue: Queue) -> list[tuple[str, dict[bytes, bytes]]]:
    """The dead-letter entries of ``queue``: ``(dlq stream id, fields)``."""
    reply = cast(Any, await raw.xrange(queue.keys.dlq))
    return [(sid.decode(), fields) for sid, fields in reply]


async def commandstats(raw: aioredis.Redis) -> dict[str, int]:
    """``{command: calls}`` from INFO commandstats (``xreadgroup``, ``client|setinfo``)."""
    info = await raw.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


# -- logs --------------------------------------------------------------------------------


class EventLog(logging.Handler):
    """Collects the library's log records (their ``msg`` is the event name)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, event: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.msg == event]

    def count(self, event: str) -> int:
        return len(self.named(event))


@contextmanager
def capture_events(name: str = "leanmq_async", level: int = logging.INFO) -> Iterator[EventLog]:
    """A handler on logger ``name`` for the block (its level lowered to ``level``)."""
    logger = logging.getLogger(name)
    handler = EventLog()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# -- worker subprocesses -----------------------------------------------------------------


class Apps:
    """Worker subprocesses of one test (``python -m tests.reliability.apps.<name>`` or the
    ``leanmq-worker`` CLI), each with a log file; whatever still runs at the end is
    SIGKILLed by its own pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self, name: str, env: Mapping[str, str], label: str, *, cli_args: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """Start app ``name`` (with ``cli_args``: through ``leanmq-worker``)."""
        if cli_args or name.endswith(":mq"):
            module = name if name.startswith(APP_PACKAGE) else f"{APP_PACKAGE}.{name}"
            target = module if ":" in module else f"{module}:mq"
            cmd = [sys.executable, "-m", "leanmq_async.worker.cli", target, *cli_args]
        else:
            cmd = [sys.executable, "-m", f"{APP_PACKAGE}.{name}"]
        log = self.directory / f"{label}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append((proc, log))
        return proc

    def log_of(self, proc: subprocess.Popen[bytes], chars: int = 4000) -> str:
        """The end of ``proc``'s output (``chars=0``: all of it)."""
        for p, log in self.procs:
            if p is proc:
                return log.read_text(errors="replace") if chars == 0 else log_tail(log, chars)
        return "(unknown process)"

    async def wait_exit(self, proc: subprocess.Popen[bytes], within: float) -> int:
        """The exit code of ``proc``; fail (with its log) if it runs past ``within`` s."""
        try:
            await wait_until(lambda: proc.poll() is not None, within=within, interval=0.05)
        except AssertionError:
            raise AssertionError(
                f"process {proc.pid} still running after {within}s:\n{self.log_of(proc)}"
            ) from None
        code = proc.returncode
        assert code is not None
        return code

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        for proc, _ in self.procs:
            self.kill(proc)


async def sleep_until_redis_time_passes(raw: aioredis.Redis, ms: float) -> None:
    """Wait until the Redis clock reads at least ``ms`` (bounded)."""

    async def passed() -> bool:
        sec, usec = await raw.time()
        return sec * 1000 + usec / 1000 >= ms

    await wait_until(passed, within=30, interval=0.02, what="the Redis clock")


async def redis_ms(raw: aioredis.Redis) -> float:
    sec, usec = await raw.time()
    return sec * 1000 + usec / 1000


async def consumer_pending(
    raw: aioredis.Redis, queue: Queue, group: str | None = None
) -> dict[str, int]:
    """``{consumer: pending}`` of ``queue``'s group."""
    summary = await raw.xpending(queue.stream, group or queue.consumer_group)
    return {c["name"].decode(): int(c["pending"]) for c in summary.get("consumers") or []}


async def pending_ids(
    raw: aioredis.Redis, queue: Queue, consumer: str | None = None, group: str | None = None
) -> list[str]:
    """The stream ids pending in ``queue``'s group (held by ``consumer``, if given)."""
    reply = await raw.xpending_range(
        queue.stream, group or queue.consumer_group, "-", "+", 100_000, consumername=consumer
    )
    return [p["message_id"].decode() for p in reply]


# -- in-process workers ------------------------------------------------------------------

Behaviour = Callable[[Message[dict[str, Any]]], Awaitable[None]]


def ledger_client(
    url: str,
    prefix: str,
    ledger: Ledger,
    *,
    consumer: str | None = None,
    queue: str = "work",
    sleep: float = 0.0,
    behaviour: Behaviour | None = None,
    connection: ConnectionSettings | None = None,
    **options: Any,
) -> tuple[LeanMQ, Queue]:
    """A client whose one handler records ``start`` and ``done`` of every execution.

    ``behaviour`` (awaited between the two) may raise to fail the attempt; otherwise the
    handler sleeps ``sleep`` seconds. ``options`` are the handler's options.
    """
    mq = LeanMQ(url, prefix=prefix, consumer_name=consumer, connection=connection)
    q = mq.queue(queue)

    @q.handler(**options)
    async def handle(message: Message[dict[str, Any]]) -> None:
        mid = str(message.data["mid"])
        info = {
            "who": mq.consumer_name,
            "sid": message.id,
            "dc": message.delivery_count,
            "att": message.attempt,
        }
        ledger.record(mid, "start", **info)
        if behaviour is not None:
            await behaviour(message)
        elif sleep:
            await anyio.sleep(sleep)
        ledger.record(mid, "done", **info)

    return mq, q
