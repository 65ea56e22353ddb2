"""Profile the leanmq_async burst drain: where does the worker's CPU go?

Fills a private Redis with ``--messages`` envelopes (default 30,000), then runs the same
burst drain as ``drain.py`` (concurrency ``--concurrency``, default 500) under a sampling
profiler, and prints:

* self time grouped by area (the worker pipeline, store.py, envelope.py, anyio memory streams,
  other anyio, redis-py parsing / connection / client, the asyncio loop, waiting in
  ``select``), in % of the sampled time;
* the top functions by self time, and by inclusive time.

``--tool pyinstrument`` (default; ``async_mode="disabled"``, so each sample is the real
stack of whichever task or loop callback is on the CPU) also writes the call tree to
``benchmarks/results/profile_drain.txt``. Its tracing hook slows call-heavy code, so
absolute rates under it are low; ``--tool py-spy`` samples from another process (no
overhead in the worker) as a cross-check, ``--tool both`` runs the two.

C functions count in the area of their Python caller (py-spy shows no C frames; for
pyinstrument they are folded the same way), except the selector's poll (idle, waiting on
Redis). Needs pyinstrument and/or py-spy (``pip install pyinstrument py-spy``; not
project dependencies). Run: ``python -m benchmarks.profile_drain [--tool both]``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio

from benchmarks._common import (
    RESULTS_DIR,
    fill_envelopes,
    payloads,
    private_redis,
    quiet_logging,
    warn_if_busy,
)
from benchmarks._consumers import lmq_drain, lmq_names

REPO = Path(__file__).resolve().parent.parent
IDLE = "waiting in select() (idle, I/O)"
PIPELINE = "leanmq_async worker pipeline (runner and its parts)"
AREAS = [
    ("leanmq_async/worker/runner.py", PIPELINE),
    ("leanmq_async/worker/state.py", PIPELINE),
    ("leanmq_async/worker/dispatch.py", PIPELINE),
    ("leanmq_async/worker/fetcher.py", PIPELINE),
    ("leanmq_async/worker/executor.py", PIPELINE),
    ("leanmq_async/worker/settler.py", PIPELINE),
    ("leanmq_async/worker/settle_batch.py", PIPELINE),
    ("leanmq_async/worker/leases.py", PIPELINE),
    ("leanmq_async/worker/recovery.py", PIPELINE),
    ("leanmq_async/worker/", "leanmq_async worker (other)"),
    ("leanmq_async/store.py", "leanmq_async store.py"),
    ("leanmq_async/envelope.py", "leanmq_async envelope.py"),
    ("leanmq_async/connection.py", "leanmq_async connection.py"),
    ("leanmq_async/", "leanmq_async (other)"),
    ("anyio/streams/memory.py", "anyio memory object streams"),
    ("anyio/", "anyio (tasks, events, cancel scopes, checkpoints)"),
    ("redis/_parsers/", "redis-py parsing (hiredis glue)"),
    ("redis/asyncio/connection.py", "redis-py connection + pool"),
    ("redis/asyncio/client.py", "redis-py client / pipeline"),
    ("redis/", "redis-py (other: retry, commands, utils)"),
    ("selectors.py", IDLE),
    ("asyncio/", "asyncio event loop + transports"),
    ("structlog/", "structlog"),
    ("benchmarks/", "benchmark code (handler, timing)"),
]

Frame = tuple[str, str, int]  # function, file, line


def area_of(path: str) -> str:
    for needle, name in AREAS:
        if needle in path:
            return name
    return "other"


def _short(path: str | None) -> str:
    if not path:
        return "?"
    for marker in ("site-packages/", str(REPO) + "/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path.rsplit("/", 1)[-1]


def _is_c(frame: Frame) -> bool:
    return not frame[1] or "built-in" in frame[1]


def _key(f: Frame) -> str:
    return f"{f[0]}  ({_short(f[1])})"


def aggregate(samples: Iterable[tuple[list[Frame], float]]) -> dict[str, dict[str, float]]:
    """Self time per function and area, inclusive time per function and per leanmq line."""
    out: dict[str, dict[str, float]] = {
        "self": defaultdict(float),
        "incl": defaultdict(float),
        "area": defaultdict(float),
        "lines": defaultdict(float),
    }
    for stack, weight in samples:
        if not stack:
            continue
        leaf = stack[-1]
        out["self"][_key(leaf)] += weight
        py = [f for f in stack if not _is_c(f)]
        if "poll" in leaf[0] and (_is_c(leaf) or "selectors" in leaf[1]):
            area = IDLE
        else:
            area = area_of(py[-1][1]) if py else "other"
        out["area"][area] += weight
        seen = set()
        for f in stack:
            k = _key(f)
            if k not in seen:
                seen.add(k)
                out["incl"][k] += weight
            if "leanmq_async/" in f[1]:
                line = f"{_short(f[1])}:{f[2]}  {f[0]}"
                if line not in seen:
                    seen.add(line)
                    out["lines"][line] += weight
    return out


def report(title: str, agg: dict[str, dict[str, float]], top: int, with_lines: bool = False) -> str:
    total = sum(agg["area"].values()) or 1.0
    busy = total - agg["area"].get(IDLE, 0.0)
    lines = [title, "", "self time by area (% of samples; % of non-idle samples):"]
    for name, t in sorted(agg["area"].items(), key=lambda kv: -kv[1]):
        extra = "" if name == IDLE else f"  ({100 * t / busy:4.1f}% of busy)"
        lines.append(f"  {100 * t / total:5.1f}%{extra}  {name}")
    lines += ["", f"top {top} functions by self time (C calls folded into the caller):"]
    for key, t in sorted(agg["self"].items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * t / total:5.1f}%  {key}")
    lines += ["", f"top {top} functions by inclusive time (leanmq_async, anyio, redis-py):"]
    incl = [
        (k, t)
        for k, t in agg["incl"].items()
        if any(m in k for m in ("leanmq_async/", "anyio/", "redis/"))
    ]
    for key, t in sorted(incl, key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * t / total:5.1f}%  {key}")
    if with_lines:
        lines += ["", "leanmq_async lines by inclusive time (py-spy line numbers):"]
        for key, t in sorted(agg["lines"].items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {100 * t / total:5.1f}%  {key}")
    return "\n".join(lines)


# -- pyinstrument -------------------------------------------------------------------------


def _pyinstrument_samples(frame: Any, stack: list[Frame]) -> Iterable[tuple[list[Frame], float]]:
    me: Frame = (frame.function, frame.file_path or "", frame.line_no or 0)
    path = [*stack, me]
    real = [c for c in frame.children if not c.is_synthetic]
    # Fold a C function into its caller, like py-spy (which has no C frames), except the
    # poll of the selector: that is idle time.
    own = frame.time - sum(c.time for c in real)
    if own > 0:
        if _is_c(me) and "poll" not in me[0] and stack:
            yield stack, own
        else:
            yield path, own
    for c in real:
        yield from _pyinstrument_samples(c, path)


def run_pyinstrument(url: str, n: int, concurrency: int, top: int, out: Path) -> str:
    from pyinstrument import Profiler
    from pyinstrument.renderers import ConsoleRenderer

    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    res = anyio.run(lmq_drain, url, n, concurrency, backend="asyncio")
    profiler.stop()
    session = profiler.last_session
    agg = aggregate(_pyinstrument_samples(session.root_frame(), []))
    text = report(
        f"[pyinstrument] leanmq_async burst drain, {n:,} msgs, concurrency {concurrency}: "
        f"{n / res['elapsed']:,.0f} msg/s under the profiler ({session.duration:.2f} s sampled)",
        agg,
        top,
    )
    tree = ConsoleRenderer(unicode=False, color=False, time="percent_of_total").render(session)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n\ncall tree (pyinstrument):\n" + tree)
    return text


# -- py-spy -------------------------------------------------------------------------------

_PYSPY_FRAME = re.compile(r"^(.*) \((.*?):(\d+)\)$")


def run_pyspy(url: str, n: int, concurrency: int, top: int) -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp, "stacks.txt")
        child = [
            sys.executable,
            "-m",
            "benchmarks.profile_drain",
            "--child",
            url,
            "--messages",
            str(n),
            "--concurrency",
            str(concurrency),
        ]
        proc = subprocess.run(
            [
                exe,
                "record",
                "--format",
                "raw",
                "--rate",
                "500",
                "--idle",
                "--nonblocking",
                "--full-filenames",
                "-o",
                str(raw),
                "--",
                *child,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not raw.exists():
            raise SystemExit(f"py-spy failed: {proc.stderr[-2000:]}")
        said = [ln for ln in proc.stdout.splitlines() if "msg/s" in ln]
        rate = said[-1] if said else "?"
        samples = []
        for line in raw.read_text().splitlines():
            stack_text, _, count = line.rpartition(" ")
            frames: list[Frame] = []
            for part in stack_text.split(";"):
                m = _PYSPY_FRAME.match(part)
                if m:
                    frames.append((m.group(1), m.group(2), int(m.group(3))))
            # Only the drain (inside anyio.run): leave out imports and process setup.
            if any(f[0] == "child_drain" for f in frames):
                samples.append((frames, float(count)))
    agg = aggregate(samples)
    return report(
        f"[py-spy, 500 Hz, out of process] leanmq_async burst drain, {n:,} msgs, "
        f"concurrency {concurrency}: {rate}",
        agg,
        top,
        with_lines=True,
    )


def child_drain(url: str, n: int, concurrency: int) -> None:
    quiet_logging()
    res = anyio.run(lmq_drain, url, n, concurrency, backend="asyncio")
    print(f"{n / res['elapsed']:,.0f} msg/s while sampled")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--messages", type=int, default=30_000)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--tool", choices=("pyinstrument", "py-spy", "both"), default="pyinstrument")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "profile_drain.txt")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_drain(a.child, a.messages, a.concurrency)
        return
    quiet_logging()
    warn_if_busy()
    texts = []
    for tool in ("pyinstrument", "py-spy"):
        if a.tool not in (tool, "both"):
            continue
        with private_redis() as srv:
            stream, _, _ = lmq_names()
            fill_envelopes(srv, stream, payloads(a.messages))
            t0 = time.perf_counter()
            if tool == "pyinstrument":
                try:
                    import pyinstrument  # noqa: F401
                except ImportError:
                    raise SystemExit(
                        "pyinstrument is not installed: pip install pyinstrument"
                    ) from None
                text = run_pyinstrument(srv.url, a.messages, a.concurrency, a.top, a.out)
            else:
                text = run_pyspy(srv.url, a.messages, a.concurrency, a.top)
        texts.append(text)
        print(text)
        print(f"({tool}: {time.perf_counter() - t0:.1f} s)\n")
    if a.tool in ("pyinstrument", "both"):
        if a.tool == "both":
            body = a.out.read_text()
            a.out.write_text(texts[-1] + "\n\n" + "=" * 80 + "\n" + body)
        print(f"report and call tree: {a.out}")


if __name__ == "__main__":
    main()
