"""Shared pieces of the benchmarks: CLI, private Redis, workload, statistics, tables, JSON.

Every benchmark module exposes ``run(cfg, srv) -> section`` (a JSON-able dict of tables)
and ``main(argv)``. A *section* holds *tables*; a table holds *rows*; a row holds one value
per run. Each row may name a ceiling row and a LeanMQ 0.2 row **of the same table**: its
ratios are computed run by run (run *i* against run *i* of the reference, measured back
to back in the same process and on the same server), and the median ratio is reported.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import redis

from leanmq_async.testing import RedisServer

RESULTS_DIR = Path(__file__).resolve().parent / "results"

CEILING = "ceiling"
LEANMQ_ASYNC = "leanmq_async"
LEANMQ_SYNC = "leanmq 0.2"


# -- configuration ------------------------------------------------------------------------


@dataclass
class Config:
    messages: int = 20_000
    runs: int = 3
    quick: bool = False
    long: bool = False
    latency_seconds: float = 2.0
    rates: tuple[int, ...] = (100, 500, 2000, 10_000)
    concurrencies: tuple[int, ...] = (100, 500, 1000)
    processes: tuple[int, ...] = (1, 2, 4)
    memory_messages: int = 200_000
    memory_concurrency: int = 1000
    profile_concurrency: int = 500
    uvloop: bool = False
    out: Path | None = None
    plot: bool = True
    only: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d["out"] = str(self.out) if self.out else None
        return d


def parse_args(
    description: str, argv: Sequence[str] | None = None, default_out: str | None = None
) -> Config:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--runs", type=int, default=None, help="runs per row (median, min-max); 3")
    p.add_argument("--messages", type=int, default=None, help="messages per drain/enqueue; 20000")
    p.add_argument("--quick", action="store_true", help="~1 minute smoke run (fewer, smaller)")
    p.add_argument(
        "--long", action="store_true", help="memory: 1,000,000 messages instead of 200,000"
    )
    p.add_argument("--latency-seconds", type=float, default=None, help="seconds per rate; 2")
    p.add_argument("--uvloop", action="store_true", help="run the event loops on uvloop")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    if default_out == "latest.json":
        p.add_argument(
            "--only",
            default="",
            help="comma-separated sections: enqueue,drain,processes,latency,failures,cost,memory,"
            "cron,cancel,priorities,rate_limit,producers,many_queues",
        )
    a = p.parse_args(argv)
    cfg = Config()
    if a.quick:
        cfg.quick = True
        cfg.messages = 5_000
        cfg.runs = 1
        cfg.latency_seconds = 1.0
        cfg.memory_messages = 40_000
    if a.long:
        cfg.long = True
        cfg.memory_messages = 1_000_000
    if a.runs is not None:
        cfg.runs = max(1, a.runs)
    if a.messages is not None:
        cfg.messages = max(1000, a.messages)
    if a.latency_seconds is not None:
        cfg.latency_seconds = a.latency_seconds
    cfg.uvloop = a.uvloop
    cfg.plot = not a.no_plot
    cfg.out = a.out or (RESULTS_DIR / default_out if default_out else None)
    only = getattr(a, "only", "")
    cfg.only = tuple(s.strip() for s in only.split(",") if s.strip())
    quiet_logging()
    return cfg


def quiet_logging() -> None:
    """LeanMQ 0.2 calls ``logging.basicConfig(level=INFO)`` at import: keep the output clean.

    The leanmq_async worker logs retries and dead-letters; a benchmark shows tables, so
    only errors get through (the structlog processors still run, as in production).
    """
    import leanmq  # noqa: F401  (import it now, so its basicConfig runs before we adjust)

    logging.getLogger().setLevel(logging.ERROR)
    for name in ("leanmq", "leanmq_async", "leanmq.queue", "leanmq.core"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_async(cfg: Config, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``anyio.run`` on asyncio (uvloop with ``--uvloop`` when installed)."""
    options: dict[str, Any] = {}
    if cfg.uvloop:
        try:
            import uvloop  # noqa: F401

            options["use_uvloop"] = True
        except ImportError:
            print("  (uvloop is not installed: using the default asyncio loop)")
    gc.collect()
    if kwargs:
        func = functools.partial(func, **kwargs)
    return anyio.run(func, *args, backend="asyncio", backend_options=options)


# -- workload -----------------------------------------------------------------------------


def make_payload(i: int) -> dict[str, Any]:
    """A ~100-byte JSON object (the exact size is printed in the results)."""
    return {
        "order_id": 1_000_000 + i,
        "customer": f"c-{i % 10_000:05d}",
        "amount": round(10 + (i % 997) * 0.37, 2),
        "currency": "EUR",
        "sku": f"sku-{i % 9000 + 1000}",
        "qty": 1 + i % 9,
    }


def payloads(n: int) -> list[dict[str, Any]]:
    return [make_payload(i) for i in range(n)]


def payload_size() -> int:
    return len(json.dumps(make_payload(4242), separators=(",", ":")))


# -- Redis --------------------------------------------------------------------------------


@contextmanager
def private_redis() -> Iterator[Server]:
    """A throwaway redis-server (never the one on 6379) and a sync admin client."""
    with RedisServer() as rs:
        admin = redis.Redis(host="127.0.0.1", port=rs.port, socket_timeout=None)
        try:
            yield Server(rs.url, rs.port, admin, rs)
        finally:
            admin.close()


@dataclass
class Server:
    url: str
    port: int
    admin: redis.Redis
    process: RedisServer

    def flush(self) -> None:
        self.admin.flushall()

    def version(self) -> str:
        return str(self.admin.info("server")["redis_version"])

    def counters(self) -> tuple[dict[str, int], float]:
        """(calls per command, used CPU seconds sys+user) of the server, now."""
        stats = self.admin.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        cpu = self.admin.info("cpu")
        return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def fill_envelopes(srv: Server, stream: str, items: Sequence[Any], chunk: int = 2000) -> bytes:
    """Pre-fill ``stream`` with leanmq_async envelopes (as ``send_message`` writes them).

    Returns the last stream id. Uses a sync pipeline: filling is not what is measured.
    """
    from leanmq_async.envelope import get_codec

    codec = get_codec("json")
    last = b""
    for i in range(0, len(items), chunk):
        pipe = srv.admin.pipeline(transaction=False)
        for data in items[i : i + chunk]:
            _, body = codec.encode(data)
            pipe.xadd(stream, {codec.field: body})
        last = pipe.execute()[-1]
    return last


def fill_leanmq02(
    srv: Server, stream: str, items: Sequence[dict[str, Any]], chunk: int = 2000
) -> bytes:
    """Pre-fill with LeanMQ 0.2's own format (exactly what its ``send_message`` writes)."""
    import uuid

    last = b""
    for i in range(0, len(items), chunk):
        pipe = srv.admin.pipeline(transaction=False)
        for data in items[i : i + chunk]:
            body = dict(data)
            body["_metadata"] = {"id": str(uuid.uuid4()), "timestamp": time.time(), "ttl": None}
            pipe.xadd(stream, {"data": json.dumps(body)}, maxlen=100000)
        last = pipe.execute()[-1]
    return last


def leanmq02(srv: Server, prefix: str) -> Any:
    import leanmq

    return leanmq.LeanMQ(redis_host="127.0.0.1", redis_port=srv.port, prefix=prefix)


# -- statistics and rows ------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[k])


@dataclass
class Row:
    name: str
    kind: str
    values: list[float] = field(default_factory=list)
    ceiling: str | None = None
    sync: str | None = None
    base: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class Table:
    title: str
    unit: str
    higher_is_better: bool = True
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fmt: str = "{:,.0f}"
    base_label: str | None = None

    def row(self, name: str, kind: str, **kw: Any) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        r = Row(name, kind, **kw)
        self.rows.append(r)
        return r

    def get(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def ratio(self, row: Row, ref_name: str | None) -> dict[str, Any] | None:
        ref = self.get(ref_name) if ref_name else None
        if ref is None or ref is row:
            return None
        pairs = [
            a / b for a, b in zip(row.values, ref.values, strict=False) if b and a == a and b == b
        ]
        if not pairs:
            return None
        return {"ref": ref.name, "median": median(pairs), "min": min(pairs), "max": max(pairs)}

    def to_json(self) -> dict[str, Any]:
        rows = [
            {
                "name": r.name,
                "kind": r.kind,
                "unit": self.unit,
                "median": median(r.values),
                "min": min(r.values) if r.values else None,
                "max": max(r.values) if r.values else None,
                "values": r.values,
                "vs_ceiling": self.ratio(r, r.ceiling),
                "vs_leanmq_0_2": self.ratio(r, r.sync),
                "vs_base": self.ratio(r, r.base),
                "extra": r.extra,
                "note": r.note,
            }
            for r in self.rows
        ]
        return {
            "title": self.title,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "fmt": self.fmt,
            "base_label": self.base_label,
            "rows": rows,
            "notes": self.notes,
        }


def section(name: str, title: str, tables: list[Table], **extra: Any) -> dict[str, Any]:
    return {"name": name, "title": title, "tables": [t.to_json() for t in tables], **extra}


def _line(cells: Sequence[Any], widths: Sequence[int]) -> str:
    """One table line: the first cell left-aligned, the others right-aligned."""
    return "  " + "  ".join(
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def _fmt_ratio(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if abs(r["max"] - r["min"]) < 0.005 or r["min"] == r["max"]:
        return f"{r['median']:.2f}x"
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def format_table(t: dict[str, Any]) -> str:
    fmt = t.get("fmt", "{:,.0f}")
    better = "higher is better" if t["higher_is_better"] else "lower is better"
    head = ["variant", f"median {t['unit']}", "min-max", "vs ceiling", "vs leanmq 0.2"]
    base = t.get("base_label")
    if base:
        head.append(f"vs {base}")
    lines = []
    for r in t["rows"]:
        if r["median"] is None or r["median"] != r["median"]:
            val, rng = "n/a", ""
        else:
            val = fmt.format(r["median"])
            rng = f"{fmt.format(r['min'])}-{fmt.format(r['max'])}" if len(r["values"]) > 1 else ""
        name = f"[{r['kind']}] {r['name']}"
        if r.get("note"):
            name += f"  ({r['note']})"
        line = [name, val, rng, _fmt_ratio(r["vs_ceiling"]), _fmt_ratio(r["vs_leanmq_0_2"])]
        if base:
            line.append(_fmt_ratio(r.get("vs_base")))
        lines.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    out = [f"== {t['title']}  [{t['unit']}, {better}]"]
    out.append(_line(head, widths))
    out.append("  " + "  ".join("-" * w for w in widths))
    out += [_line(line, widths) for line in lines]
    out += [f"  note: {note}" for note in t.get("notes", [])]
    return "\n".join(out)


def format_merged(tables: list[dict[str, Any]]) -> str:
    """Tables with the same rows (one per metric, e.g. p50/p99/max) side by side."""
    first = tables[0]
    fmt = first.get("fmt", "{:,.0f}")
    metrics = [t["title"].rsplit(" ", 1)[-1] for t in tables]
    better = "higher is better" if first["higher_is_better"] else "lower is better"
    slash = "/".join(metrics)
    head = [
        "variant",
        *[f"{m} {t['unit']}" for m, t in zip(metrics, tables, strict=True)],
        f"vs ceiling {slash}",
        f"vs leanmq 0.2 {slash}",
    ]
    lines = []
    for i, r in enumerate(first["rows"]):
        rows = [t["rows"][i] for t in tables]
        t_fmt = {id(t["rows"][i]): t.get("fmt", fmt) for t in tables}
        vals = []
        for x in rows:
            if x["median"] is None or x["median"] != x["median"]:
                vals.append("n/a")
            elif len(x["values"]) > 1:
                f = t_fmt[id(x)]
                vals.append(f"{f.format(x['median'])} ({f.format(x['min'])}-{f.format(x['max'])})")
            else:
                vals.append(t_fmt[id(x)].format(x["median"]))

        def ratios(key: str, rows: list[dict[str, Any]] = rows) -> str:
            got = [x[key] for x in rows]
            if all(g is None for g in got):
                return "-"
            return "/".join(f"{g['median']:.2f}x" if g else "-" for g in got)

        name = f"[{r['kind']}] {r['name']}"
        lines.append([name, *vals, ratios("vs_ceiling"), ratios("vs_leanmq_0_2")])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    units = ", ".join(dict.fromkeys(t["unit"] for t in tables))
    out = [
        f"== {first['title'].rsplit(' ', 1)[0]}  [{units}, {better}; median over runs (min-max)]"
    ]
    out.append(_line(head, widths))
    out.append("  " + "  ".join("-" * w for w in widths))
    for i, line in enumerate(lines):
        out.append(_line(line, widths))
        note = first["rows"][i].get("note")
        if note:
            out.append(f"      {note}")
    out += [f"  note: {note}" for t in tables for note in t.get("notes", [])]
    return "\n".join(out)


def print_section(sec: dict[str, Any]) -> None:
    print()
    print(f"#### {sec['title']}")
    merged = sec.get("merged") or []
    if merged:
        print(format_merged([sec["tables"][i] for i in merged]))
        print()
    for i, t in enumerate(sec["tables"]):
        if i not in merged:
            print(format_table(t))
            print()
    sys.stdout.flush()


# -- results ------------------------------------------------------------------------------


def environment(srv: Server | None = None) -> dict[str, Any]:
    import msgspec
    import redis as redis_pkg

    import leanmq_async

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            check=False,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "leanmq_async"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "python"
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "leanmq_async": getattr(leanmq_async, "__version__", "?"),
        "git": commit + ("+dirty" if dirty else ""),
        "redis_py": redis_pkg.__version__,
        "redis_parser": parser,
        "msgspec": msgspec.__version__,
        "redis_server": srv.version() if srv else None,
        "payload_bytes": payload_size(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def warn_if_busy() -> None:
    """Other processes on the machine skew every number: say so (ratios suffer less)."""
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: the machine is busy (load average {load:.1f} on {os.cpu_count()} CPUs):"
            " absolute numbers will be low and noisy; same-run ratios are more robust"
        )


def save(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    result.setdefault("environment", {})
    if result["environment"] is not None:
        result["environment"]["loadavg_at_end"] = list(os.getloadavg())
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(path)
    print(f"results: {path}")


def standalone(
    name: str,
    title: str,
    argv: Sequence[str] | None,
    body: Callable[[Config, Server], dict[str, Any]],
    doc: str | None,
) -> None:
    """Run one benchmark module on its own private server; print, save JSON (and plot)."""
    cfg = parse_args((doc or title).strip().splitlines()[0], argv, default_out=f"{name}.json")
    started = time.perf_counter()
    warn_if_busy()
    with private_redis() as srv:
        env = environment(srv)
        count = cfg.memory_messages if name == "memory" else cfg.messages
        print(
            f"{title}: {count:,} messages of {env['payload_bytes']} B JSON, "
            f"{cfg.runs} run(s); Redis {env['redis_server']} on port {srv.port}"
        )
        sec = body(cfg, srv)
    print_section(sec)
    result = {
        "environment": env,
        "config": cfg.as_dict(),
        "sections": {name: sec},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    assert cfg.out is not None
    save(result, cfg.out)
    if cfg.plot:
        from benchmarks.plot import plot

        plot(result, cfg.out.with_suffix(".png"))
