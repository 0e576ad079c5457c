"""Dapr's app-facing programming model for FastAPI, with or without a Dapr sidecar."""

from ._cloudevent import BulkEntry, CloudEvent
from ._dapr import Dapr
from ._exceptions import (
    DaprAPIError,
    DaprError,
    HandlerSignatureError,
    ResourceError,
    SubscriptionError,
)
from ._invocation import InvocationSettings, InvokeResponse
from ._logs import JsonFormatter
from ._publisher import Publisher
from ._publishing import BulkPublishEntry, FailedEntry
from ._retry import RetryPolicy
from ._routing import DaprRouter
from ._status import DROP, RETRY, SUCCESS, Status
from ._subscription import BulkSubscribe, TopicSubscription

__version__ = "0.1.0"

__all__ = [
    "DROP",
    "RETRY",
    "SUCCESS",
    "BulkEntry",
    "BulkPublishEntry",
    "BulkSubscribe",
    "CloudEvent",
    "Dapr",
    "DaprAPIError",
    "DaprError",
    "DaprRouter",
    "FailedEntry",
    "HandlerSignatureError",
    "InvocationSettings",
    "InvokeResponse",
    "JsonFormatter",
    "Publisher",
    "ResourceError",
    "RetryPolicy",
    "Status",
    "SubscriptionError",
    "TopicSubscription",
]
