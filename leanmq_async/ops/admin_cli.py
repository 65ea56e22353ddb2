"""``leanmq``: inspect and operate the queues from a terminal, a cron job or a script.

    leanmq --url redis://localhost:6379/0 --prefix mq: queues
    leanmq stats                                   # depth, pending, lag, DLQ, consumers
    leanmq health --once                           # exit 0 ok, 1 warning, 2 critical
    leanmq dlq list orders
    leanmq dlq show orders 1700000000000-0
    leanmq dlq requeue orders --all --dry-run
    leanmq dlq purge orders --confirm
    leanmq clear orders --include-dlq --confirm
    leanmq cleanup --max-age-hours 24
    leanmq force-process orders --batch-size 100
    leanmq watch --interval 2
    leanmq serve --port 8080 --token "$ADMIN_TOKEN"
    leanmq migrate --all --dry-run                 # LeanMQ 0.2 queues: then --confirm
    leanmq bridge                                  # while LeanMQ 0.2 producers still write

``--url`` defaults to ``$LEANMQ_URL`` (then redis://localhost:6379/0), ``--prefix`` to
``$LEANMQ_PREFIX`` (then ``mq:``). Tables for people by default, ``--json`` for scripts.
Exit codes: 0 success; 1 failure (Redis unreachable, queue or message not found);
2 usage error or a destructive command without ``--confirm``; ``health --once``: 0 ok,
1 warning, 2 critical.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from leanmq_async._version import __version__
from leanmq_async.exceptions import (
    ConfigurationError,
    InvalidMessageIdError,
    LeanMQConnectionError,
    LeanMQError,
    QueueNotFoundError,
    WrongQueueKindError,
)
from leanmq_async.ops import dlq_tools, migrate_cli
from leanmq_async.ops.health import (
    EXIT_CODES,
    AlertEvent,
    HealthReport,
    HealthThresholds,
    HealthWatcher,
    check_health,
)
from leanmq_async.ops.legacy import legacy_notice
from leanmq_async.ops.stats import Stats, StatsSampler, collect_stats

if TYPE_CHECKING:
    from leanmq_async.client import LeanMQ
    from leanmq_async.message import Message

__all__ = ["build_parser", "main"]

PROG = "leanmq"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_EPILOG = """\
exit codes: 0 success, 1 failure (Redis unreachable, queue or message not found),
2 usage error or destructive command without --confirm; health --once: 0 ok,
1 warning, 2 critical.
"""


class _Usage(Exception):
    """A usage problem found after parsing (exit 2)."""


# -- argument parsing ---------------------------------------------------------------------


def _non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_seconds = _non_negative(float)
_count = _non_negative(int)


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``leanmq``."""
    # Common options are accepted before or after the command (SUPPRESS: a value given
    # before is not reset by the subcommand's default).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="Redis URL ($LEANMQ_URL)")
    common.add_argument(
        "--prefix", default=argparse.SUPPRESS, help="key prefix ($LEANMQ_PREFIX, default mq:)"
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=argparse.SUPPRESS,
        help="show the library's log events at this level on stderr",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and operate leanmq_async queues.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    command("queues", "list the queues and their dead-letter queues")

    p = command(
        "stats",
        "depth (acknowledged history included), backlog, pending, lag, DLQ, delayed and "
        "consumers of every queue",
    )
    p.add_argument("--queue", action="append", metavar="NAME", help="only this queue (repeat)")
    p.add_argument(
        "--interval",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="take two samples S seconds apart to show rates (default: 0, no rates)",
    )

    p = command("health", "check queues against thresholds (--once for cron)")
    p.add_argument("--once", action="store_true", help="check once and exit 0/1/2")
    p.add_argument("--queue", action="append", metavar="NAME", help="only this queue (repeat)")
    p.add_argument(
        "--interval", type=_positive_seconds, default=30.0, metavar="S", help="between checks"
    )
    p.add_argument("--iterations", type=_positive_int, metavar="N", help="stop after N checks")
    defaults = HealthThresholds()
    what = {
        "backlog": ("N", "messages a group has not finished (waiting + pending)"),
        "dlq": ("N", "messages in the dead-letter queue"),
        "pending": ("N", "messages delivered and not acknowledged"),
        "oldest-pending": ("S", "age in seconds of the oldest pending message"),
    }
    for name, (metavar, text) in what.items():
        kind = _seconds if metavar == "S" else _count
        for level in ("warning", "critical"):
            attr = f"{name.replace('-', '_')}_{level}" + ("_s" if metavar == "S" else "")
            default = getattr(defaults, attr)
            many = "this many " if metavar == "N" else "this "
            shown = "off" if default is None else default
            p.add_argument(
                f"--{name}-{level}",
                dest=attr,
                type=kind,
                default=default,
                metavar=metavar,
                help=f"{level} above {many}{text} (default: {shown})",
            )

    dlq = command("dlq", "inspect and operate a dead-letter queue")
    dsub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)

    def dlq_command(name: str, text: str) -> argparse.ArgumentParser:
        q = dsub.add_parser(name, help=text, description=text, parents=[common])
        q.add_argument("queue", metavar="QUEUE")
        return q

    p = dlq_command("list", "list dead letters (oldest first) without consuming them")
    p.add_argument("--count", type=_positive_int, default=50, metavar="N")
    p.add_argument("--start", default="-", metavar="ID", help="first stream id to show")
    p = dlq_command("show", "show one dead letter with its failure details")
    p.add_argument("id", metavar="ID")
    p = dlq_command("requeue", "move dead letters back to their queue")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every message in the DLQ")
    p.add_argument("--dry-run", action="store_true", help="only report what would move")
    p = dlq_command("purge", "delete every message of the DLQ")
    p.add_argument("--confirm", action="store_true", help="required: this deletes messages")

    p = command("clear", "delete every message of a queue (and with --include-dlq its DLQ)")
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument("--include-dlq", action="store_true")
    p.add_argument("--confirm", action="store_true", help="required: this deletes messages")

    p = command("cleanup", "trim acknowledged history older than N hours (never unacked)")
    p.add_argument("--max-age-hours", type=_seconds, required=True, metavar="N")
    p.add_argument("--queue", action="append", metavar="NAME", help="only this queue (repeat)")

    p = command("force-process", "re-deliver messages stuck pending (dead consumers) now")
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument("--batch-size", type=_positive_int, default=100, metavar="N")
    p.add_argument(
        "--min-idle",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="only messages idle this long (default: 60, above a worker's 30 s lease)",
    )
    p.add_argument("--group", help="consumer group (default: the queue's)")
    p.add_argument("--dry-run", action="store_true", help="only list the stuck messages")

    p = command("watch", "live view of the queues, refreshed every --interval seconds")
    p.add_argument("--interval", type=_seconds, default=2.0, metavar="S")
    p.add_argument("--iterations", type=_positive_int, metavar="N", help="stop after N views")
    p.add_argument("--queue", action="append", metavar="NAME", help="only this queue (repeat)")

    p = command("serve", "run the admin HTTP API and dashboard (uvicorn, else aiohttp)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--token",
        default=os.environ.get("LEANMQ_ADMIN_TOKEN"),
        help="bearer token required by the API ($LEANMQ_ADMIN_TOKEN)",
    )
    p.add_argument("--server", choices=("auto", "uvicorn", "aiohttp"), default="auto")

    migrate_cli.add_parsers(command)  # migrate, bridge: LeanMQ 0.2 (issue 15)
    return parser


# -- output -------------------------------------------------------------------------------


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")


def _print_json(value: Any) -> None:
    _out(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, numbers right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            numeric = i > 0 and (cell.replace(",", "").replace(".", "").isdigit() or cell == "-")
            out.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


DEPTH_LEGEND = (
    "DEPTH counts every entry kept in the stream, acknowledged history included (the worker "
    "trims it after its retention);\nBACKLOG = LAG + PENDING is the work still to do."
)


def _stats_text(stats: Stats) -> str:
    rows = []
    for q in stats.queues:
        rate = None if q.error_rate is None else q.error_rate * 100
        rows.append(
            [
                q.name if q.exists else f"{q.name} (deleted)",
                _num(q.length),
                _num(q.backlog),
                _num(q.pending),
                _num(q.lag),
                _age(q.oldest_pending_age_s),
                _num(q.dlq_length),
                _num(q.delayed),
                _num(q.consumers),
                _num(q.enqueued_per_s, 1),
                _num(q.processed_per_s, 1),
                "-" if rate is None else f"{rate:.1f}%",
            ]
        )
    if not rows and not any(q.total for q in stats.legacy):
        return f"no queues under prefix {stats.prefix!r}"
    parts = [
        table(
            [
                "QUEUE", "DEPTH", "BACKLOG", "PENDING", "LAG", "OLDEST", "DLQ", "DELAYED",
                "CONSUMERS", "IN/S", "DONE/S", "ERRORS",
            ],
            rows,
        )
    ]  # fmt: skip
    group_rows = []
    for q in stats.queues:
        for g in q.groups:
            consumers = ", ".join(
                f"{c.name} ({c.pending} pending, idle {_age(c.idle_s)})" for c in g.consumers
            )
            lag = _num(g.lag) + ("" if g.lag_exact else "+")
            group_rows.append(
                [
                    q.name,
                    g.name,
                    _num(g.pending),
                    lag,
                    _age(g.oldest_pending_idle_s),
                    consumers or "-",
                ]
            )
    if group_rows:
        parts.append("")
        parts.append(
            table(["QUEUE", "GROUP", "PENDING", "LAG", "OLDEST-IDLE", "CONSUMERS"], group_rows)
        )
    parts.append(f"\n{DEPTH_LEGEND}")
    if stats.window_s:
        parts.append(f"rates over {stats.window_s:.1f}s")
    parts.extend(f"error in {q.name}: {q.error}" for q in stats.queues if q.error)
    if any(q.total for q in stats.legacy):  # LeanMQ 0.2 (issue 15)
        parts.append(f"\n{legacy_notice([q for q in stats.legacy if q.total])}")
    return "\n".join(parts)


def _health_text(report: HealthReport) -> str:
    lines = [f"status: {report.status}" + ("" if report.redis else " (Redis unreachable)")]
    lines.extend(f"  [{issue.level}] {issue.message}" for issue in report.issues)
    if not report.issues:
        lines.append(f"  {len(report.queues) - 1} queue(s) checked, no issue")
    return "\n".join(lines)


def _message_row(m: Message[Any]) -> list[str]:
    info = m.dead_letter
    reason = ""
    if info is not None:
        reason = (f"{info.error_type}: " if info.error_type else "") + info.reason
    return [
        m.id,
        _when(info.failed_at if info else None),
        _short(reason, 50),
        str(info.attempts if info else 0),
        _short(json.dumps(msgspec.to_builtins(m.data), default=str), 60),
    ]


# -- commands -----------------------------------------------------------------------------


def _thresholds(args: argparse.Namespace) -> HealthThresholds:
    names = [
        f"{check}_{level}{suffix}"
        for check, suffix in (
            ("backlog", ""),
            ("dlq", ""),
            ("pending", ""),
            ("oldest_pending", "_s"),
        )
        for level in ("warning", "critical")
    ]
    return HealthThresholds(**{n: getattr(args, n) for n in names})


async def _cmd_queues(mq: LeanMQ, args: argparse.Namespace) -> int:
    infos = await mq.list_queues()
    if args.json:
        _print_json(infos)
        return EXIT_OK
    if not infos:
        _out(f"no queues under prefix {mq.prefix!r}")
        return EXIT_OK
    rows = [
        [
            i.name,
            "dlq" if i.is_dlq else "queue",
            _num(i.message_count),
            _num(i.pending_messages),
            _num(i.delayed_messages) if not i.is_dlq else "-",
            ",".join(i.consumer_groups) or "-",
            _when(i.created_at),
        ]
        for i in infos
    ]
    _out(table(["NAME", "KIND", "MESSAGES", "PENDING", "DELAYED", "GROUPS", "CREATED"], rows))
    return EXIT_OK


async def _cmd_stats(mq: LeanMQ, args: argparse.Namespace) -> int:
    if args.interval:
        sampler = StatsSampler(mq, window=args.interval * 2 + 1, queues=args.queue)
        await sampler.collect()
        await anyio.sleep(args.interval)
        stats = await sampler.collect()
    else:
        stats = await collect_stats(mq, args.queue)
    if args.json:
        _print_json(stats)
    else:
        _out(_stats_text(stats))
    return EXIT_OK


async def _cmd_health(mq: LeanMQ, args: argparse.Namespace) -> int:
    thresholds = _thresholds(args)
    if args.once:
        report = await check_health(mq, thresholds, queues=args.queue)
        if args.json:
            _print_json(report)
        else:
            _out(_health_text(report))
        return report.exit_code

    def show(event: AlertEvent) -> None:
        if args.json:
            _out(msgspec.json.encode(event).decode())
        else:
            stamp = time.strftime("%H:%M:%S")
            _out(f"{stamp} {event.queue}: {event.previous} -> {event.current}")
            for issue in event.issues:
                _out(f"  [{issue.level}] {issue.message}")
        sys.stdout.flush()

    watcher = HealthWatcher(
        mq, [show], interval=args.interval, thresholds=thresholds, queues=args.queue
    )
    await watcher.run(iterations=args.iterations)
    last = watcher.last_report
    return last.exit_code if last is not None else EXIT_OK


async def _cmd_dlq(mq: LeanMQ, args: argparse.Namespace) -> int:
    action = args.dlq_command
    if action == "list":
        messages = await dlq_tools.list_dead_letters(mq, args.queue, args.count, args.start)
        if args.json:
            _print_json(messages)
        elif not messages:
            _out(f"the dead-letter queue of {args.queue!r} is empty")
        else:
            rows = [_message_row(m) for m in messages]
            _out(table(["ID", "FAILED", "REASON", "ATTEMPTS", "DATA"], rows))
        return EXIT_OK
    if action == "show":
        message = await dlq_tools.get_dead_letter(mq, args.queue, args.id)
        if message is None:
            _err(f"no message {args.id} in the dead-letter queue of {args.queue!r}")
            return EXIT_FAILURE
        if args.json:
            _print_json(message)
            return EXIT_OK
        info = message.dead_letter
        fields = [
            ("id", message.id),
            ("message id", message.message_id),
            ("enqueued", _when(message.timestamp)),
        ]
        if info is not None:
            fields += [
                ("failed", _when(info.failed_at)),
                ("reason", info.reason),
                ("error", info.error_type or "-"),
                ("attempts", str(info.attempts)),
                ("from", f"{info.source_queue} {info.source_id} (group {info.group or '-'})"),
            ]
        fields.append(("headers", json.dumps(message.headers)))
        for name, value in fields:
            _out(f"{name + ':':<12} {value}")
        _out("data:")
        _out(json.dumps(msgspec.to_builtins(message.data), indent=2, default=str))
        if info is not None and info.traceback:
            _out("traceback:")
            _out(info.traceback.rstrip())
        return EXIT_OK
    if action == "requeue":
        if args.all == bool(args.ids):
            raise _Usage("dlq requeue: give message ids, or --all (not both)")
        report = await dlq_tools.requeue_dead_letters(
            mq, args.queue, args.ids or None, all_messages=args.all, dry_run=args.dry_run
        )
        if args.json:
            _print_json(report)
        else:
            verb = "would requeue" if report.dry_run else "requeued"
            _out(f"{verb} {report.count} message(s) to {report.queue!r}")
            for sid in report.requeued:
                _out(f"  {sid}")
            for skipped in report.skipped:
                _out(f"  skipped {skipped.id}: {skipped.reason}")
        return EXIT_OK
    # purge
    if not args.confirm:
        raise _Usage(f"dlq purge deletes every dead letter of {args.queue!r}: add --confirm")
    purged = await dlq_tools.purge_dead_letters(mq, args.queue, confirm=True)
    if args.json:
        _print_json(purged)
    else:
        _out(f"purged {purged.purged} dead letter(s) of {purged.queue!r}")
    return EXIT_OK


async def _cmd_clear(mq: LeanMQ, args: argparse.Namespace) -> int:
    if not args.confirm:
        what = " and its dead-letter queue" if args.include_dlq else ""
        raise _Usage(f"clear deletes every message of {args.queue!r}{what}: add --confirm")
    report = await dlq_tools.clear_queue(mq, args.queue, include_dlq=args.include_dlq, confirm=True)
    if args.json:
        _print_json(report)
    else:
        text = f"cleared {report.queue!r}: {report.messages} message(s), {report.delayed} delayed"
        if report.dead_letters is not None:
            text += f", {report.dead_letters} dead letter(s)"
        _out(text)
    return EXIT_OK


async def _cmd_cleanup(mq: LeanMQ, args: argparse.Namespace) -> int:
    report = await dlq_tools.cleanup(mq, args.max_age_hours, queues=args.queue)
    if args.json:
        _print_json(report)
    else:
        _out(
            f"trimmed {report.total} acknowledged entr{'y' if report.total == 1 else 'ies'} "
            f"older than {args.max_age_hours:g}h"
        )
        for name, n in report.trimmed.items():
            _out(f"  {name}: {n}")
        for name, error in report.errors.items():
            _out(f"  {name}: error: {error}")
    return EXIT_FAILURE if report.errors else EXIT_OK


async def _cmd_force_process(mq: LeanMQ, args: argparse.Namespace) -> int:
    report = await dlq_tools.force_process(
        mq,
        args.queue,
        args.batch_size,
        min_idle=args.min_idle,
        group=args.group,
        dry_run=args.dry_run,
    )
    if args.json:
        _print_json(report)
        return EXIT_OK
    if report.dry_run:
        _out(
            f"{len(report.candidates)} message(s) of {report.queue!r} (group {report.group}) "
            f"stuck pending for {report.min_idle_s:g}s or more"
        )
    else:
        _out(
            f"re-delivered {len(report.redelivered)} of {len(report.candidates)} stuck "
            f"message(s) of {report.queue!r} (group {report.group})"
        )
    if report.candidates:
        rows = [[c.id, c.consumer, _age(c.idle_s), str(c.deliveries)] for c in report.candidates]
        _out(table(["ID", "CONSUMER", "IDLE", "DELIVERIES"], rows))
    for skipped in report.skipped:
        _out(f"  skipped {skipped.id}: {skipped.reason}")
    return EXIT_OK


async def _cmd_watch(mq: LeanMQ, args: argparse.Namespace) -> int:
    sampler = StatsSampler(mq, window=max(10.0, args.interval * 5), queues=args.queue)
    tty = sys.stdout.isatty()
    done = 0
    while args.iterations is None or done < args.iterations:
        stats = await sampler.collect()
        if args.json:
            _out(msgspec.json.encode(stats).decode())
        else:
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            stamp = time.strftime("%H:%M:%S", time.localtime(stats.collected_at))
            _out(f"{PROG} watch  prefix {mq.prefix!r}  {stamp}  (every {args.interval:g}s)")
            _out()
            _out(_stats_text(stats))
            _out()
        sys.stdout.flush()
        done += 1
        if args.iterations is not None and done >= args.iterations:
            break
        await anyio.sleep(args.interval)
    return EXIT_OK


async def _cmd_serve(mq: LeanMQ, args: argparse.Namespace) -> int:
    from leanmq_async.ops.http import admin_app, aiohttp_admin_app

    if args.token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        _err(f"warning: serving on {args.host} without --token: anyone who can connect can")
        _err("         purge and clear queues")
    server = args.server
    if server == "auto":
        server = "uvicorn" if _installed("uvicorn") else "aiohttp" if _installed("aiohttp") else ""
    if not server:
        raise _Usage("serve needs uvicorn or aiohttp: pip install 'leanmq-async[admin]' (uvicorn)")
    if not _installed(server):
        raise _Usage(f"--server {server}: {server} is not installed (pip install {server})")
    _err(f"serving the admin API on http://{args.host}:{args.port}/ with {server}")
    if server == "uvicorn":
        import uvicorn

        config = uvicorn.Config(
            admin_app(mq, args.token), host=args.host, port=args.port, lifespan="off"
        )
        await uvicorn.Server(config).serve()
        return EXIT_OK
    from aiohttp import web

    runner = web.AppRunner(aiohttp_admin_app(mq, args.token))
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
    finally:
        await runner.cleanup()
    return EXIT_OK


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


_COMMANDS: dict[str, Callable[[LeanMQ, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "queues": _cmd_queues,
    "stats": _cmd_stats,
    "health": _cmd_health,
    "dlq": _cmd_dlq,
    "clear": _cmd_clear,
    "cleanup": _cmd_cleanup,
    "force-process": _cmd_force_process,
    "watch": _cmd_watch,
    "serve": _cmd_serve,
    # LeanMQ 0.2 (issue 15)
    "migrate": migrate_cli.cmd_migrate,
    "bridge": migrate_cli.cmd_bridge,
}


async def _run(args: argparse.Namespace) -> int:
    from leanmq_async.client import LeanMQ

    url = getattr(args, "url", None)
    prefix = getattr(args, "prefix", None)
    if prefix is None:
        prefix = os.environ.get("LEANMQ_PREFIX", "mq:")
    async with LeanMQ(url, prefix=prefix) as mq:
        return await _COMMANDS[args.command](mq, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``leanmq`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.json = getattr(args, "json", False)
    if hasattr(args, "log_level"):  # otherwise logging stays as it is (WARNING+ to stderr)
        from leanmq_async.worker.cli import configure_logging

        configure_logging(args.log_level, "console")
    try:
        return anyio.run(functools.partial(_run, args), backend="asyncio")
    except _Usage as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except dlq_tools.ConfirmationRequiredError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except QueueNotFoundError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILURE
    except (ConfigurationError, InvalidMessageIdError, WrongQueueKindError) as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except LeanMQConnectionError as exc:
        _err(f"error: {exc}")
        if args.command == "health" and args.once:
            return EXIT_CODES["critical"]
        return EXIT_FAILURE
    except LeanMQError as exc:
        _err(f"error: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
