"""Run every benchmark: ``python -m benchmarks [--runs N] [--quick] [--long] [--only a,b]``.

Each section starts its own private ``redis-server`` (never the one on 6379) and compares
leanmq_async with a plain-Redis ceiling and with sync LeanMQ 0.2 measured in the same run:

1-2. enqueue one by one and in bulk          (``benchmarks/enqueue.py``)
3.   drain in one process                    (``benchmarks/drain.py``)
4.   drain with 1, 2, 4 worker processes     (``benchmarks/processes.py``)
5.   latency send -> handler at 4 rates      (``benchmarks/latency.py``)
6.   drain with 1 % failing messages         (``benchmarks/failures.py``)
7.   Redis commands and CPU per message      (``benchmarks/cost.py``)
8.   consumer RSS over a long drain          (``benchmarks/memory.py``)
10.  periodic jobs: tick script, worker CPU  (``benchmarks/cron.py``)
11.  cancellation: cost per message, stop    (``benchmarks/cancel.py``)
12.  drain with 3 priority levels vs plain   (``benchmarks/priorities.py``)
13.  rate-limiter overhead per message       (``benchmarks/rate_limit.py``)
14.  concurrent producers (1-200 tasks)      (``benchmarks/producers.py``)
15.  one worker over 1, 100, 1,000 queues    (``benchmarks/many_queues.py``)

Results go to ``benchmarks/results/latest.json`` (and ``latest.png`` when matplotlib is
installed). The default run takes about 5 minutes on 2 cores; ``--quick`` about 1.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from benchmarks import (
    cancel,
    cost,
    cron,
    drain,
    enqueue,
    failures,
    latency,
    many_queues,
    memory,
    priorities,
    processes,
    producers,
    rate_limit,
)
from benchmarks._common import (
    environment,
    parse_args,
    print_section,
    private_redis,
    save,
    warn_if_busy,
)

SECTIONS = {
    "enqueue": enqueue,
    "drain": drain,
    "processes": processes,
    "latency": latency,
    "failures": failures,
    "cost": cost,
    "memory": memory,
    "cron": cron,
    "cancel": cancel,
    "priorities": priorities,
    "rate_limit": rate_limit,
    "producers": producers,
    "many_queues": many_queues,
}


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_args(__doc__.splitlines()[0], argv, default_out="latest.json")
    wanted = [s for s in SECTIONS if not cfg.only or s in cfg.only]
    unknown = set(cfg.only) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    warn_if_busy()
    started = time.perf_counter()
    result: dict[str, Any] = {"environment": None, "config": cfg.as_dict(), "sections": {}}
    for name in wanted:
        module = SECTIONS[name]
        t0 = time.perf_counter()
        with private_redis() as srv:
            if result["environment"] is None:
                env = result["environment"] = environment(srv)
                print(
                    f"leanmq_async {env['leanmq_async']} ({env['git']}), Python {env['python']}, "
                    f"redis-py {env['redis_py']} ({env['redis_parser']}), Redis "
                    f"{env['redis_server']}, {env['cpus']} CPUs; {cfg.messages:,} messages of "
                    f"{env['payload_bytes']} B JSON, {cfg.runs} run(s) per row"
                )
            print(f"\n[{name}] {module.TITLE} (redis-server on port {srv.port})")
            sec = module.run(cfg, srv)
        sec["elapsed_s"] = round(time.perf_counter() - t0, 1)
        result["sections"][name] = sec
        print_section(sec)
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    print("=" * 100)
    print(f"SUMMARY ({result['elapsed_s']:.0f} s)")
    for sec in result["sections"].values():
        print_section(sec)
    assert cfg.out is not None
    save(result, cfg.out)
    if cfg.plot:
        from benchmarks.plot import plot

        plot(result, cfg.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
