"""An app for the CLI tests with a client but no handlers."""

from __future__ import annotations

import os

from leanmq_async import LeanMQ

mq = LeanMQ(os.environ["LEANMQ_URL"], prefix=os.environ.get("CLI_TEST_PREFIX", "cli:"))
orders = mq.queue("orders")
