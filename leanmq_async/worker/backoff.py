"""Re-exports :mod:`leanmq_async.backoff` under its older worker import path."""

from leanmq_async.backoff import Backoff, exponential_backoff, make_exponential_backoff

__all__ = ["Backoff", "exponential_backoff", "make_exponential_backoff"]
