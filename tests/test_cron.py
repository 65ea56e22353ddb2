"""Periodic jobs (issue 16): exactly one run per tick across workers, missed ticks run once
(or skipped), runs are ordinary messages (retries, DLQ), validation, and the listings."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from leanmq_async import ConfigurationError, CronRun, LeanMQ
from leanmq_async.cron_schedule import parse_schedule
from leanmq_async.ops import collect_stats
from leanmq_async.ops.admin_api import AdminAPI
from leanmq_async.ops.admin_cli import main as leanmq_main
from leanmq_async.ops.cron_list import collect_cron
from leanmq_async.testing import RedisServer
from tests.worker_apps.common import blocked_readers, wait_until

pytestmark = pytest.mark.anyio

APPS = Path(__file__).parent / "cli_apps"
MINUTE = 60_000


async def redis_ms(raw: aioredis.Redis) -> int:
    sec, usec = await raw.time()
    return int(sec) * 1000 + int(usec) // 1000


async def state(raw: aioredis.Redis, mq: LeanMQ, job: str) -> dict[str, str]:
    reply = await raw.hgetall(mq.queue(f"cron.{job}").keys.cron)
    return {k.decode(): v.decode() for k, v in reply.items()}


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "match"),
    [
        (("* * *",), {}, "must have five fields"),
        (("0 0 * * * *",), {}, "must have five fields"),
        (("61 * * * *",), {}, "invalid cron expression"),
        (("* * 31 2 *",), {}, "invalid cron expression"),
        (("*/5 * * * *",), {"every": 30}, "not both"),
        ((), {}, "not neither"),
        ((), {"every": 0}, "positive interval"),
        ((), {"every": -5}, "positive interval"),
        ((), {"every": timedelta(0)}, "positive interval"),
        ((), {"every": "30"}, "seconds .* or a timedelta"),
        ((), {"every": True}, "seconds .* or a timedelta"),
        (("* * * * *",), {"tz": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ((), {"every": 1, "missed": "all"}, "missed='all': use 'run_once'"),
        ((), {"every": 1, "jitter": -1}, "jitter must be"),
        ((), {"every": 1, "group": "x"}, "unknown cron option"),
        ((), {"every": 1, "max_retries": -1}, "max_retries"),
        ((), {"every": 1, "name": "has space"}, "invalid job name"),
    ],
)
def test_bad_options_are_refused_with_what_to_do(
    args: tuple[Any, ...], options: dict[str, Any], match: str
) -> None:
    mq = LeanMQ("redis://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match=match):

        @mq.cron(*args, **options)
        async def job() -> None:
            pass

    assert mq.cron_jobs == {} and mq.handlers == []


def test_bad_functions_and_duplicate_names_are_refused() -> None:
    mq = LeanMQ("redis://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="must be an `async def`"):

        @mq.cron(every=1)
        def sync_job() -> None:
            pass

    with pytest.raises(ConfigurationError, match="needs its schedule"):

        @mq.cron  # type: ignore[arg-type]
        async def bare() -> None:
            pass

    with pytest.raises(ConfigurationError, match="no argument or one"):

        @mq.cron(every=1)
        async def two(a: int, b: int) -> None:
            pass

    @mq.cron(every=1)
    async def job() -> None:
        pass

    with pytest.raises(ConfigurationError, match="already registered: pass name="):

        @mq.cron(every=2)
        async def job() -> None:
            pass

    @mq.cron(every=2, name="job-2")
    async def other(run: CronRun) -> None:
        pass

    assert sorted(mq.cron_jobs) == ["job", "job-2"]
    assert [h.queue.name for h in mq.handlers] == ["cron.job", "cron.job-2"]


# -- schedules -----------------------------------------------------------------------------


def ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def test_every_ticks_at_multiples_of_the_interval_since_the_epoch() -> None:
    s = parse_schedule(None, timedelta(minutes=5), "UTC")
    t = ms(datetime(2026, 1, 1, 10, 7, 30, tzinfo=UTC))
    assert s.next_after(t) == ms(datetime(2026, 1, 1, 10, 10, tzinfo=UTC))
    assert s.latest_at_or_before(t) == ms(datetime(2026, 1, 1, 10, 5, tzinfo=UTC))
    assert s.next_after(s.next_after(t)) - s.next_after(t) == 300_000
    assert s.describe() == "every 300s"


def test_cron_ticks_in_the_time_zone_across_daylight_saving() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    s = parse_schedule("30 2 * * *", None, "Europe/Berlin")
    assert s.describe() == "30 2 * * * (Europe/Berlin)"
    # 2026-03-29: 02:00 -> 03:00, 02:30 does not exist: it runs once, right after the gap.
    before = ms(datetime(2026, 3, 28, 12, 0, tzinfo=berlin))
    ticks = [s.next_after(before)]
    for _ in range(2):
        ticks.append(s.next_after(ticks[-1]))
    local = [s.at(t).strftime("%d %H:%M %z") for t in ticks]
    assert local == ["29 03:00 +0200", "30 02:30 +0200", "31 02:30 +0200"]
    # 2026-10-25: 03:00 -> 02:00, 02:30 happens twice: it runs once.
    day = ms(datetime(2026, 10, 24, 12, 0, tzinfo=berlin))
    got = [s.next_after(day)]
    got.append(s.next_after(got[0]))
    assert [s.at(t).strftime("%d %H:%M %z") for t in got] == ["25 02:30 +0200", "26 02:30 +0100"]
    # Each tick found going forward is found going back, also in the repeated hour.
    minutely = parse_schedule("*/15 * * * *", None, "Europe/Berlin")
    t = ms(datetime(2026, 10, 25, 0, 0, tzinfo=UTC))
    for _ in range(12):
        nxt = minutely.next_after(t)
        assert nxt > t and minutely.latest_at_or_before(nxt) == nxt
        assert minutely.latest_at_or_before(nxt - 1) == t
        t = nxt


# -- the tick script: exactly once ----------------------------------------------------------


async def tick_call(mq: LeanMQ, job: str, tick: int) -> int:
    keys = mq.queue(f"cron.{job}").keys
    codec = mq.codec
    _, body = codec.encode({"job": job, "tick": tick}, f"{job}:{tick}")
    result = await mq.store.cron_tick(keys, tick, tick + 1000, 0, 0, codec.field, body, "")
    return result.status


async def test_concurrent_calls_for_one_tick_enqueue_exactly_one_run(
    redis_server: RedisServer, prefix: str, raw: aioredis.Redis
) -> None:
    clients = [LeanMQ(redis_server.url, prefix=prefix) for _ in range(6)]
    try:
        now = await redis_ms(raw)
        for tick in (now - 3000, now - 2000, now - 1000):
            statuses: list[int] = []

            async def call(c: LeanMQ, tick: int = tick) -> None:
                statuses.append(await tick_call(c, "race", tick))  # noqa: B023

            async with anyio.create_task_group() as tg:
                for c in clients:
                    for _ in range(5):
                        tg.start_soon(call, c)
            assert sorted(statuses) == [0] * 29 + [1]
        stream = clients[0].queue("cron.race").stream
        assert await raw.xlen(stream) == 3
        # An older tick than the last one never runs, however late its call comes.
        assert await tick_call(clients[0], "race", now - 2500) == 0
        assert await raw.xlen(stream) == 3
    finally:
        for c in clients:
            await c.aclose()


async def test_ticks_called_in_any_order_run_each_at_most_once_in_rising_order(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    rng = random.Random(16)
    now = await redis_ms(raw)
    ticks = [now - 100_000 + 1000 * i for i in range(60)]
    enqueued: list[int] = []
    for _ in range(300):  # several "workers" with different views calling in random order
        tick = rng.choice(ticks)
        if await tick_call(mq, "order", tick) == 1:
            enqueued.append(tick)
    assert enqueued == sorted(set(enqueued))
    assert await raw.xlen(mq.queue("cron.order").stream) == len(enqueued)
    # A tick in the future (on the Redis clock) is refused with the wait.
    keys = mq.queue("cron.order").keys
    result = await mq.store.cron_tick(keys, now + 60_000, now + 120_000, 0, 0, b"j", b"{}", "")
    assert result.status == 3 and 50_000 < result.wait_ms <= 60_000


# -- in one worker -------------------------------------------------------------------------


async def test_a_job_runs_once_per_tick_with_its_run_info(mq: LeanMQ, raw: aioredis.Redis) -> None:
    runs: list[CronRun] = []
    plain: list[int] = []

    @mq.cron(every=0.25)
    async def beat(run: CronRun) -> None:
        runs.append(run)

    @mq.cron(every=0.25, name="plain")
    async def no_argument() -> None:
        plain.append(1)

    async with mq.worker(block_ms=50):
        await wait_until(lambda: len(runs) >= 4 and len(plain) >= 4, within=10, what="4 runs")
    ticks = [r.tick_ms for r in runs]
    assert ticks == sorted(set(ticks)) and all(t % 250 == 0 for t in ticks)
    assert all(b - a == 250 for a, b in itertools.pairwise(ticks))
    first = runs[0]
    assert first.job == "beat" and first.attempt == 1
    assert first.message_id == f"beat:{first.tick_ms}"
    assert first.scheduled_at == datetime.fromtimestamp(first.tick_ms / 1000, tz=UTC)
    s = await state(raw, mq, "beat")
    assert s["outcome"] == "ok" and s["schedule"] == "every 0.25s"
    assert int(s["runs"]) == len(runs) and int(s["succeeded"]) == len(runs)


async def test_the_scheduler_sleeps_until_the_next_tick_and_stops_with_the_worker(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    @mq.cron(every=3600)
    async def hourly() -> None:
        pass

    @mq.cron(every=0.5)
    async def often() -> None:
        pass

    worker = mq.worker(block_ms=50)
    async with worker:
        await wait_until(lambda: state(raw, mq, "often"), what="registration")
        await anyio.sleep(1.6)
        scheduler = worker.maintenance.cron
        assert scheduler is not None
        # One pass at start, then one per tick of `often` (3 or 4 in 1.6 s): no polling.
        assert 2 <= scheduler.wakeups <= 7, scheduler.wakeups
        assert 2 <= scheduler.enqueued <= 5
    # Stopped with the worker: no tick enqueued after it returned.
    runs = (await state(raw, mq, "often"))["runs"]
    await anyio.sleep(0.7)
    assert (await state(raw, mq, "often"))["runs"] == runs
    assert "runs" not in await state(raw, mq, "hourly")


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of this test's own, to kill and restart."""
    with RedisServer(appendonly=True) as server:
        yield server


async def test_the_scheduler_survives_redis_going_away(own_server: RedisServer) -> None:
    ticks: list[int] = []
    async with LeanMQ(own_server.url, prefix="away:") as mq:

        @mq.cron(every=0.2)
        async def beat(run: CronRun) -> None:
            ticks.append(run.tick_ms)

        async with mq.worker(block_ms=50):
            await wait_until(lambda: len(ticks) >= 2, within=10, what="runs")
            await anyio.to_thread.run_sync(own_server.kill)
            await anyio.sleep(1.0)  # ticks fail meanwhile: logged, retried, never fatal
            await anyio.to_thread.run_sync(own_server.start)
            before = len(ticks)
            await wait_until(lambda: len(ticks) >= before + 3, within=20, what="runs again")
    assert ticks == sorted(set(ticks))


async def test_jitter_delays_the_run_and_it_still_runs_once(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    ran: list[tuple[int, int]] = []

    @mq.cron("* * * * *", jitter=0.4)
    async def late() -> None:
        ran.append((1, await redis_ms(raw)))

    keys = mq.queue("cron.late").keys
    now = await redis_ms(raw)
    latest = now - now % MINUTE
    await raw.hset(keys.cron, "last", latest - MINUTE)  # one tick due: run it at start
    async with mq.worker(block_ms=50):
        await wait_until(lambda: len(ran) == 1, within=10, what="the jittered run")
        await anyio.sleep(0.5)
    assert len(ran) == 1
    s = await state(raw, mq, "late")
    assert s["last"] == str(latest) and "|" in s["run_id"]  # written as a delayed entry
    assert s["jitter_ms"] == "400"


async def test_a_tick_missed_while_no_worker_ran_runs_once(mq: LeanMQ, raw: aioredis.Redis) -> None:
    ran: list[CronRun] = []

    @mq.cron("* * * * *")
    async def minutely(run: CronRun) -> None:
        ran.append(run)

    async with mq.worker(block_ms=50):  # registers the job: ticks from now on are its
        await wait_until(lambda: state(raw, mq, "minutely"), what="registration")
        await anyio.sleep(0.2)
    first_last = int((await state(raw, mq, "minutely"))["last"])
    ran.clear()
    # Five minutes of downtime, ending 20 s into a minute (no tick during the test).
    now = await redis_ms(raw)
    mq.store.clock_shift_ms = 5 * MINUTE + (20_000 - now % MINUTE) % MINUTE
    shifted = now + mq.store.clock_shift_ms
    async with mq.worker(block_ms=50):
        await wait_until(lambda: len(ran) >= 1, within=10, what="the catch-up run")
        await anyio.sleep(0.5)
    assert len(ran) == 1, [r.scheduled_at for r in ran]
    assert ran[0].tick_ms == shifted - shifted % MINUTE  # the latest tick missed
    assert ran[0].tick_ms - first_last >= 5 * MINUTE  # five or six ticks missed: one run
    s = await state(raw, mq, "minutely")
    assert s["last"] == str(ran[0].tick_ms) and s["next"] == str(ran[0].tick_ms + MINUTE)


async def test_missed_skip_records_the_missed_tick_without_running_it(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    ran: list[int] = []

    @mq.cron("* * * * *", missed="skip")
    async def careful() -> None:
        ran.append(1)

    keys = mq.queue("cron.careful").keys
    now = await redis_ms(raw)
    # 45 s into a minute: later than "skip"'s grace (half the interval, 30 s here).
    mq.store.clock_shift_ms = (45_000 - now % MINUTE) % MINUTE
    shifted = now + mq.store.clock_shift_ms
    await raw.hset(keys.cron, "last", shifted - shifted % MINUTE - 3 * MINUTE)
    async with mq.worker(block_ms=50):
        await wait_until(lambda: state(raw, mq, "careful"), what="registration")
        await wait_until(lambda: _status(raw, keys.cron, "skipped"), within=10, what="the skip")
        await anyio.sleep(0.3)
    assert ran == []
    s = await state(raw, mq, "careful")
    assert s["skipped"] == "1" and s["last"] == str(shifted - shifted % MINUTE)
    assert await raw.xlen(keys.stream) == 0


async def _status(raw: aioredis.Redis, key: str, want: str) -> bool:
    return await raw.hget(key, "status") == want.encode()


async def test_a_failing_run_is_retried_then_dead_lettered_like_a_message(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    attempts: list[int] = []

    @mq.cron("* * * * *", max_retries=1, backoff=lambda n: 0.05, timeout=5)
    async def flaky(run: CronRun) -> None:
        attempts.append(run.attempt)
        raise RuntimeError("the report server is down")

    queue = mq.queue("cron.flaky")
    now = await redis_ms(raw)
    await raw.hset(queue.keys.cron, "last", now - now % MINUTE - MINUTE)
    async with mq.worker(block_ms=50):
        dlq = queue.dead_letter_queue().stream
        await wait_until(lambda: _xlen_is(raw, dlq, 1), within=10, what="the dead letter")
        await anyio.sleep(0.2)
    assert attempts == [1, 2]
    (entry,) = await raw.xrange(dlq)
    fields = {k.decode(): v for k, v in entry[1].items()}
    assert (
        b"failed after 2 attempt(s): RuntimeError: the report server is down"
        in (fields["dlq.reason"])
    )
    s = await state(raw, mq, "flaky")
    assert (s["outcome"], s["retried"], s["failed"], s["attempt"]) == ("failed", "1", "1", "2")
    assert s["error"] == "RuntimeError: the report server is down"


async def test_a_run_over_its_timeout_fails_with_the_handlers_timeout_error(
    mq: LeanMQ, raw: aioredis.Redis
) -> None:
    @mq.cron("* * * * *", timeout=0.1, max_retries=0)
    async def slow() -> None:
        await anyio.sleep(5)

    queue = mq.queue("cron.slow")
    now = await redis_ms(raw)
    await raw.hset(queue.keys.cron, "last", now - now % MINUTE - MINUTE)
    async with mq.worker(block_ms=50):
        dlq = queue.dead_letter_queue().stream
        await wait_until(lambda: _xlen_is(raw, dlq, 1), within=10, what="the dead letter")
    s = await state(raw, mq, "slow")
    assert s["outcome"] == "failed"
    assert s["error"] == "TimeoutError: handler exceeded its timeout of 0.1s"


async def _xlen_is(raw: aioredis.Redis, stream: str, n: int) -> bool:
    return await raw.xlen(stream) == n


# -- listings ------------------------------------------------------------------------------


async def test_jobs_are_listed_in_stats_the_cli_and_the_admin_api(
    mq: LeanMQ, raw: aioredis.Redis, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    @mq.cron("*/5 * * * *", tz="Europe/Berlin", name="report")
    async def report() -> None:
        pass

    keys = mq.queue("cron.report").keys
    now = await redis_ms(raw)
    await raw.hset(keys.cron, "last", now - now % 300_000 - 300_000)
    async with mq.worker(block_ms=50):
        await wait_until(lambda: _status_outcome(raw, keys.cron), within=10, what="the run")
    stats = await collect_stats(mq)
    (job,) = stats.cron
    assert job.name == "report" and job.queue == "cron.report"
    assert job.schedule == "*/5 * * * * (Europe/Berlin)"
    tick = (now - now % 300_000) / 1000
    assert job.last_tick == tick and job.next_tick == tick + 300
    assert (job.outcome, job.runs, job.succeeded, job.failed) == ("ok", 1, 1, 0)
    assert stats.round_trips == 3  # registry, snapshot, the jobs' states
    assert stats.queue("cron.report").length == 1  # the run is an ordinary message

    async def cli(*args: str) -> int:
        argv = ["--url", redis_server.url, "--prefix", mq.prefix, *args]
        return await anyio.to_thread.run_sync(leanmq_main, argv)

    code = await cli("cron")
    text = capsys.readouterr().out
    assert code == 0
    header, row = text.splitlines()
    assert header.startswith("JOB") and "NEXT RUN" in header and "LAST RESULT" in header
    assert row.startswith("report") and "*/5 * * * * (Europe/Berlin)" in row and " ok in " in row
    assert await cli("cron", "--json") == 0
    listed = msgspec.json.decode(capsys.readouterr().out)
    assert [j["name"] for j in listed] == ["report"] and listed[0]["outcome"] == "ok"
    assert await cli("stats") == 0
    assert "report" in capsys.readouterr().out.split("DEPTH counts")[0].split("JOB")[1]

    api = AdminAPI(mq)
    response = await api.handle("GET", ["cron"], {}, {})
    assert response.status == 200
    assert msgspec.json.decode(response.body)[0]["schedule"] == job.schedule
    body = msgspec.json.decode((await api.handle("GET", ["stats"], {}, {})).body)
    assert body["cron"][0]["name"] == "report"
    assert (await collect_cron(mq))[0] == job


async def _status_outcome(raw: aioredis.Redis, key: str) -> bool:
    return await raw.hget(key, "outcome") == b"ok"


# -- several worker processes --------------------------------------------------------------


@pytest.fixture
def workers(redis_server: RedisServer, prefix: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def spawn_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``leanmq-worker cron_app:mq`` (tests/cli_apps/cron_app.py), its output to ``log_path``."""
    command = [sys.executable, "-m", "leanmq_async.worker.cli", "cron_app:mq"]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [*command, "--app-dir", str(APPS)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_three_worker_processes_run_an_every_second_job_once_per_tick(
    redis_server: RedisServer,
    prefix: str,
    raw: aioredis.Redis,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    env = {**os.environ, "LEANMQ_URL": redis_server.url, "CLI_TEST_PREFIX": prefix}
    env["PYTHONUNBUFFERED"] = "1"
    workers.extend(spawn_worker(env, tmp_path / f"worker{i}.log") for i in range(3))

    async def all_reading() -> bool:
        assert all(p.poll() is None for p in workers), _logs(tmp_path)
        return await blocked_readers(raw) >= 3

    await wait_until(all_reading, within=30, what="three workers reading")
    now = await redis_ms(raw)
    start = now - now % 1000 + 1000  # the next whole second: ten ticks from there
    end = start + 10_000
    await anyio.sleep((end - now) / 1000 + 1.5)  # and time for the last run to finish
    beats = [b.decode().split(":") for b in await raw.lrange(f"{prefix}beats", 0, -1)]
    ticks = [int(t) for t, _ in beats]
    assert len(ticks) == len(set(ticks)), "a tick ran twice"
    window = [t for t in ticks if start <= t < end]
    assert 9 <= len(window) <= 11, (window, _logs(tmp_path))
    assert all(p.poll() is None for p in workers)
    assert len({pid for _, pid in beats}) >= 1


def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-1500:] for p in tmp_path.glob("*.log"))
