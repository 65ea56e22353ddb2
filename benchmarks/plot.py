"""Draw a results JSON as one PNG: throughput bars, latency percentiles, cost, memory.

Needs matplotlib, which is optional: without it the benchmarks skip the plot with a note.
Re-draw a saved run with ``python -m benchmarks.plot benchmarks/results/latest.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLORS = {"ceiling": "#9e9e9e", "leanmq_async": "#1f77b4", "leanmq 0.2": "#ff7f0e"}
THROUGHPUT = ("enqueue", "drain", "processes", "failures")


def plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "note: matplotlib is not installed, so no PNG was drawn. `pip install matplotlib` "
            "(and add `matplotlib` to the dev extra, or to a `bench` extra, in pyproject.toml)"
        )
        return None
    secs = result["sections"]
    bars = [
        (sec, t, r)
        for name in THROUGHPUT
        if name in secs
        for sec in [secs[name]]
        for t in sec["tables"]
        for r in t["rows"]
    ]
    side = [s for s in ("latency", "cost", "memory") if s in secs]
    fig = plt.figure(figsize=(17, max(7.5, 0.32 * len(bars) + 2)))
    grid = fig.add_gridspec(max(1, len(side)), 2, width_ratios=[1.15, 1])
    if bars:
        ax = fig.add_subplot(grid[:, 0])
        _throughput(ax, bars)
    for i, name in enumerate(side):
        ax = fig.add_subplot(grid[i, 1])
        {"latency": _latency, "cost": _cost, "memory": _memory}[name](ax, secs[name])
    env = result.get("environment", {})
    fig.suptitle(
        f"leanmq_async {env.get('leanmq_async', '')} ({env.get('git', '')}) - Python "
        f"{env.get('python', '')}, Redis {env.get('redis_server', '')}, {env.get('cpus')} CPUs, "
        f"{env.get('payload_bytes')} B payloads - {env.get('time', '')}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"plot: {path}")
    return path


def _throughput(ax: Any, bars: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]) -> None:
    labels, values, errs, colors = [], [], [[], []], []
    last_table = None
    for _, t, r in reversed(bars):
        if last_table is not None and t["title"] != last_table:
            labels.append("")
            values.append(0)
            errs[0].append(0)
            errs[1].append(0)
            colors.append("white")
        last_table = t["title"]
        short = t["title"].split(" ", 1)[0]
        name = r["name"].replace("XREADGROUP 1000 + ", "").replace(" per msg + XACK per batch", "")
        labels.append(f"{short} {name}"[:52])
        med = r["median"] or 0
        values.append(med)
        errs[0].append(max(0, med - (r["min"] or med)))
        errs[1].append(max(0, (r["max"] or med) - med))
        colors.append(COLORS.get(r["kind"], "#444"))
    y = range(len(values))
    ax.barh(list(y), values, xerr=errs, color=colors, capsize=2)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("msg/s (log scale; median, bars = min-max)")
    ax.set_title("Throughput (1-2 enqueue, 3 drain, 4 N processes, 6 failures)")
    for yi, v in zip(y, values, strict=True):
        if v:
            ax.text(v, yi, f" {v:,.0f}", va="center", fontsize=6)
    _legend(ax)


def _latency(ax: Any, sec: dict[str, Any]) -> None:
    by_title = {t["title"].rsplit(" ", 1)[-1]: t for t in sec["tables"]}
    for metric, style in (("p50", "-"), ("p99", "--")):
        t = by_title.get(metric)
        if not t:
            continue
        series: dict[str, list[tuple[float, float]]] = {}
        for r in t["rows"]:
            rate = float(r["name"].split("/", 1)[0].replace(",", ""))
            series.setdefault(r["kind"], []).append((rate, r["median"]))
        for kind, pts in series.items():
            pts.sort()
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                marker="o",
                color=COLORS.get(kind, "#444"),
                label=f"{kind} {metric}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (msg/s)")
    ax.set_ylabel("send -> handler start (ms)")
    ax.set_title("5. Latency p50 (solid) and p99 (dashed)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _cost(ax: Any, sec: dict[str, Any]) -> None:
    tables = sec["tables"]
    names = [r["name"] for r in tables[0]["rows"]]
    kinds = [r["kind"] for r in tables[0]["rows"]]
    width = 0.8 / max(1, len(names))
    for j, (_name, kind) in enumerate(zip(names, kinds, strict=True)):
        vals = [t["rows"][j]["median"] for t in tables]
        xs = [i + j * width for i in range(len(tables))]
        ax.bar(xs, vals, width, color=COLORS.get(kind, "#444"), label=kind)
        for x, v in zip(xs, vals, strict=True):
            ax.text(
                x, v, f"{v:.2f}" if v < 10 else f"{v:.0f}", ha="center", va="bottom", fontsize=6
            )
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(tables))])
    ax.set_xticklabels([f"{t['title'].rsplit(' ', 1)[-1]}\n({t['unit']})" for t in tables])
    ax.set_yscale("log")
    ax.set_title("7. Cost per message in a drain")
    ax.legend(fontsize=7)


def _memory(ax: Any, sec: dict[str, Any]) -> None:
    for r in sec["tables"][0]["rows"]:
        samples = r.get("extra", {}).get("samples") or []
        ax.plot(
            [s["messages"] for s in samples],
            [s["rss_mb"] for s in samples],
            marker=".",
            color=COLORS.get(r["kind"], "#444"),
            label=f"{r['kind']}: {r['name']}"[:60],
        )
    ax.set_xlabel("messages handled")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("8. Consumer RSS during a long drain")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)


def _legend(ax: Any) -> None:
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=c, label=k) for k, c in COLORS.items()], fontsize=8, loc="lower right"
    )


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results/latest.json"
    plot(json.loads(src.read_text()), src.with_suffix(".png"))
