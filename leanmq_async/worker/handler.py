"""Re-exports :mod:`leanmq_async.registration` (what ``@queue.handler`` records) for the worker."""

from leanmq_async.registration import (
    ExpiredPolicy,
    Handler,
    HandlerFunc,
    HandlerKwargs,
    HandlerOptions,
    register_handler,
)

__all__ = [
    "ExpiredPolicy",
    "Handler",
    "HandlerFunc",
    "HandlerKwargs",
    "HandlerOptions",
    "register_handler",
]
