"""Drain with failures: 1 % of the messages always raise.

Each run drains the same N messages without failures and then with 1 % poison messages
(``order_id % 100 == 0``) and reports both, the ratio between them, and checks that
every message ended handled or in the dead-letter queue. Same server, same run:

* ceiling: the plain ``asyncio.create_task`` drain of ``drain.py``, without failures
  (a bare consumer has no retry or DLQ to compare with);
* leanmq_async: the burst worker at concurrency 500, ``max_retries=1`` and
  ``backoff=lambda n: 0``: each poison message is retried once (the retry script re-adds
  it to the stream at once) and then dead-lettered by the DLQ script, with its traceback;
  timed until the handler has run ``N + poison`` times and nothing is pending;
* leanmq 0.2: its sync ``get_messages(100)`` loop; having no retries, the application
  moves poison messages with ``move_to_dlq`` and acknowledges the rest.

Run alone: ``python -m benchmarks.failures [--runs N] [--messages N] [--quick]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks._common import (
    CEILING,
    LEANMQ_ASYNC,
    LEANMQ_SYNC,
    Config,
    Server,
    Table,
    fill_envelopes,
    fill_leanmq02,
    leanmq02,
    payloads,
    run_async,
    section,
    standalone,
)
from benchmarks._consumers import PLAIN_MODES, is_poison, lmq_drain, lmq_names, sync_drain
from benchmarks.drain import measure_plain

NAME = "failures"
TITLE = "6. Drain with 1 % failing messages"
CONCURRENCY = 500
CEIL = PLAIN_MODES["tasks"] + ", no failures"
LMQ_OK = "worker burst c=500, no failures"
LMQ_FAIL = "worker burst c=500, 1% raise (max_retries=1, backoff 0)"
SYNC_OK = "sync loop, no failures"
SYNC_FAIL = "sync loop, 1% moved with move_to_dlq"


def measure_lmq(cfg: Config, srv: Server, items: Sequence[Any], poison: int) -> float:
    srv.flush()
    stream, _, _ = lmq_names()
    fill_envelopes(srv, stream, items)
    n = len(items)
    res = run_async(cfg, lmq_drain, srv.url, n, CONCURRENCY, poison=poison)
    want = {
        "handled": n - poison,
        "dead_lettered": poison,
        "retried": poison,
        "dlq_length": poison,
        "failed": 2 * poison,
    }
    got = {k: res[k] for k in want}
    if got != want:
        raise AssertionError(f"leanmq_async with {poison} poison messages: {got} != {want}")
    return n / res["elapsed"]


def measure_sync(srv: Server, items: Sequence[Any], with_failures: bool) -> float:
    srv.flush()
    mq = leanmq02(srv, "bench02:")
    try:
        q, dlq = mq.create_queue_pair("drain")
        fill_leanmq02(srv, q.name, items)
        res = sync_drain(q, dlq=dlq if with_failures else None)
        dlq_len = srv.admin.xlen(dlq.name)
    finally:
        mq.close()
    poison = sum(map(is_poison, items)) if with_failures else 0
    if res["handled"] != len(items) - poison or res["failed"] != poison or dlq_len != poison:
        raise AssertionError(f"leanmq 0.2: {res}, DLQ {dlq_len}, expected {poison} poison")
    return len(items) / res["elapsed"]


def run(cfg: Config, srv: Server) -> dict[str, Any]:
    items = payloads(cfg.messages)
    poison = sum(map(is_poison, items))
    table = Table(
        f"6. drain {len(items):,} msgs, {poison} ({poison / len(items):.0%}) always raise",
        "msg/s",
        base_label="no-failure drain",
    )
    table.row(CEIL, CEILING)
    table.row(LMQ_OK, LEANMQ_ASYNC, ceiling=CEIL, sync=SYNC_OK)
    table.row(LMQ_FAIL, LEANMQ_ASYNC, ceiling=CEIL, sync=SYNC_FAIL, base=LMQ_OK)
    table.row(SYNC_OK, LEANMQ_SYNC, ceiling=CEIL)
    table.row(SYNC_FAIL, LEANMQ_SYNC, ceiling=CEIL, base=SYNC_OK)
    for run_no in range(cfg.runs):
        steps = [
            (CEIL, lambda: measure_plain(cfg, srv, items, "tasks")),
            (LMQ_OK, lambda: measure_lmq(cfg, srv, items, 0)),
            (LMQ_FAIL, lambda: measure_lmq(cfg, srv, items, poison)),
            (SYNC_OK, lambda: measure_sync(srv, items, False)),
            (SYNC_FAIL, lambda: measure_sync(srv, items, True)),
        ]
        k = run_no % len(steps)
        for name, step in steps[k:] + steps[:k]:
            table.get(name).values.append(step())  # type: ignore[union-attr]
        print(f"  failures run {run_no + 1}/{cfg.runs} done")
    srv.flush()
    table.notes.append(
        f"checked every run: leanmq_async handled {len(items) - poison}, retried {poison}, "
        f"dead-lettered {poison} (DLQ length {poison}), nothing left pending"
    )
    return section(NAME, TITLE, [table], messages=len(items), poison=poison)


def main(argv: Sequence[str] | None = None) -> None:
    standalone(NAME, TITLE, argv, run, __doc__)


if __name__ == "__main__":
    main()
