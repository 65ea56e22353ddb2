"""Operations: stats, health checks and alerts, DLQ tools, the ``leanmq`` CLI, an admin API.

Library functions (all take a :class:`~leanmq_async.LeanMQ` client)::

    stats = await collect_stats(mq)                 # depth, pending, lag, DLQ, consumers
    report = await check_health(mq)                 # ok / warning / critical, per queue
    watcher = HealthWatcher(mq, callbacks=[notify], interval=30)   # alerts on changes
    await requeue_dead_letters(mq, "orders", all_messages=True, dry_run=True)

Command line: ``leanmq --help``. HTTP: ``app.mount("/admin", admin_app(mq, token=...))``
(ASGI) or ``aiohttp_admin_app(mq)``; both serve a dashboard at their root.

Optional extras: :mod:`leanmq_async.ops.metrics` (``[metrics]``: Prometheus counters,
histogram and queue gauges; ``admin_app(mq, metrics=...)`` adds ``/metrics``) and
:mod:`leanmq_async.ops.tracing` (``[tracing]``: OpenTelemetry trace propagation through
message headers and CONSUMER spans around handlers). Both are worker observers
(``mq.worker(observers=[...])``, see :mod:`leanmq_async.worker.observer`).
"""

from leanmq_async.ops.dlq_tools import (
    CleanupReport,
    ClearReport,
    ConfirmationRequiredError,
    ForceProcessReport,
    PendingMessage,
    PurgeReport,
    RequeueReport,
    SkippedMessage,
    cleanup,
    clear_queue,
    force_process,
    get_dead_letter,
    list_dead_letters,
    purge_dead_letters,
    requeue_dead_letters,
)
from leanmq_async.ops.health import (
    AlertEvent,
    AlertHook,
    HealthIssue,
    HealthReport,
    HealthThresholds,
    HealthWatcher,
    Level,
    check_health,
    evaluate,
)
from leanmq_async.ops.http import AdminAPI, admin_app, aiohttp_admin_app
from leanmq_async.ops.stats import (
    ConsumerStats,
    GroupStats,
    QueueStats,
    Stats,
    collect_stats,
)
from leanmq_async.ops.stats_sampler import StatsSampler

__all__ = [
    "AdminAPI",
    "AlertEvent",
    "AlertHook",
    "CleanupReport",
    "ClearReport",
    "ConfirmationRequiredError",
    "ConsumerStats",
    "ForceProcessReport",
    "GroupStats",
    "HealthIssue",
    "HealthReport",
    "HealthThresholds",
    "HealthWatcher",
    "Level",
    "PendingMessage",
    "PurgeReport",
    "QueueStats",
    "RequeueReport",
    "SkippedMessage",
    "Stats",
    "StatsSampler",
    "admin_app",
    "aiohttp_admin_app",
    "check_health",
    "cleanup",
    "clear_queue",
    "collect_stats",
    "evaluate",
    "force_process",
    "get_dead_letter",
    "list_dead_letters",
    "purge_dead_letters",
    "requeue_dead_letters",
]
