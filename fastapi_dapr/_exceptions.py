"""The exceptions fastapi-dapr raises.

DaprError
├── SubscriptionError   a subscription that cannot work, found at registration or start-up
└── HandlerSignatureError   a handler whose parameters cannot be filled from a delivery
"""

from __future__ import annotations

__all__ = ["DaprError", "HandlerSignatureError", "SubscriptionError"]


class DaprError(Exception):
    """Base class of every error raised by fastapi-dapr."""


class SubscriptionError(DaprError):
    """A subscription is invalid, conflicts with another, or is a duplicate."""


class HandlerSignatureError(SubscriptionError, TypeError):
    """A handler's parameters do not say where the event goes."""
