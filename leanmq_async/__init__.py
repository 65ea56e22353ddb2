"""leanmq_async: an asyncio-native message queue on Redis Streams, with a worker runtime."""

from leanmq_async._version import __version__
from leanmq_async.client import LeanMQ
from leanmq_async.cluster import Durability, NotReplicatedError
from leanmq_async.connection import ConnectionSettings
from leanmq_async.cron import CronRun
from leanmq_async.exceptions import (
    ConfigurationError,
    ConfirmationRequiredError,
    DeadLetteredError,
    DeadLetterQueueNotFoundError,
    InvalidMessageIdError,
    LeanMQConnectionError,
    LeanMQError,
    MessageDecodeError,
    MessageEncodeError,
    MessageError,
    MessageTooLargeError,
    PartialSendError,
    QueueError,
    QueueNotFoundError,
    RedisOperationError,
    Reject,
    Retry,
    SendNotWrittenError,
    SendOutcomeUnknownError,
    TransactionError,
    TransactionNotWrittenError,
    TransactionOutcomeUnknownError,
    WrongQueueKindError,
)
from leanmq_async.message import CancelOutcome, DeadLetterInfo, DeadLetterResult, Message, QueueInfo
from leanmq_async.partition import PartitionedQueue
from leanmq_async.priority import Priority
from leanmq_async.queue import Queue
from leanmq_async.rate_limit import RateLimit
from leanmq_async.transaction import Transaction
from leanmq_async.webhook import LeanMQWebhook

__all__ = [
    "CancelOutcome",
    "ConfigurationError",
    "ConfirmationRequiredError",
    "ConnectionSettings",
    "CronRun",
    "DeadLetterInfo",
    "DeadLetterQueueNotFoundError",
    "DeadLetterResult",
    "DeadLetteredError",
    "Durability",
    "InvalidMessageIdError",
    "LeanMQ",
    "LeanMQConnectionError",
    "LeanMQError",
    "LeanMQWebhook",
    "Message",
    "MessageDecodeError",
    "MessageEncodeError",
    "MessageError",
    "MessageTooLargeError",
    "NotReplicatedError",
    "PartialSendError",
    "PartitionedQueue",
    "Priority",
    "Queue",
    "QueueError",
    "QueueInfo",
    "QueueNotFoundError",
    "RateLimit",
    "RedisOperationError",
    "Reject",
    "Retry",
    "SendNotWrittenError",
    "SendOutcomeUnknownError",
    "Transaction",
    "TransactionError",
    "TransactionNotWrittenError",
    "TransactionOutcomeUnknownError",
    "WrongQueueKindError",
    "__version__",
]
