"""The worker runtime: handlers, the supervisor that runs them, and the CLI."""

from leanmq_async.backoff import Backoff, exponential_backoff, make_exponential_backoff
from leanmq_async.registration import Handler, HandlerOptions
from leanmq_async.worker.supervisor import Worker, WorkerSettings

__all__ = [
    "Backoff",
    "Handler",
    "HandlerOptions",
    "Worker",
    "WorkerSettings",
    "exponential_backoff",
    "make_exponential_backoff",
]
