"""An app that declares its observers on the client (``LeanMQ(observers=...)``).

Its PrometheusMetrics use the namespace ``app``, so a scrape shows whether
``leanmq-worker --metrics-port`` served the app's own collectors. LEANMQ_URL and
CLI_TEST_PREFIX as in worker_app.
"""

from __future__ import annotations

import os

from leanmq_async import LeanMQ
from leanmq_async.ops.metrics import PrometheusMetrics

metrics = PrometheusMetrics(namespace="app")
mq = LeanMQ(os.environ["LEANMQ_URL"], prefix=os.environ["CLI_TEST_PREFIX"], observers=[metrics])
orders = mq.queue("orders")


@orders.handler
async def handle_order(data: dict[str, int]) -> None:
    if data.get("fail"):
        raise ValueError("asked to fail")
