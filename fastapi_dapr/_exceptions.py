"""The exceptions fastapi-dapr raises.

DaprError
├── SubscriptionError         a subscription that cannot work, found at registration or start-up
│   └── HandlerSignatureError a handler whose parameters cannot be filled from a delivery
├── ResourceError             a Dapr resource file that cannot be used, found at start-up
└── DaprAPIError              a Dapr API call failed: daprd's status, errorCode and message
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "DaprAPIError",
    "DaprError",
    "HandlerSignatureError",
    "ResourceError",
    "SubscriptionError",
]


class DaprError(Exception):
    """Base class of every error raised by fastapi-dapr."""


class SubscriptionError(DaprError):
    """A subscription is invalid, conflicts with another, or is a duplicate."""


class HandlerSignatureError(SubscriptionError, TypeError):
    """A handler's parameters do not say where the event goes."""


class ResourceError(DaprError):
    """A resource (Component, Subscription, ...) cannot be loaded.

    The message names the file, the kind, the resource's name and the field.
    """


class DaprAPIError(DaprError):
    """A Dapr API call failed, with daprd's status, `errorCode` and message."""

    def __init__(
        self,
        status_code: int,
        error_code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{error_code}: {message}")
        self.status_code = status_code
        """The HTTP status daprd answered."""
        self.error_code = error_code
        """daprd's `errorCode` (`ERR_PUBSUB_NOT_FOUND`...)."""
        self.message = message
        """daprd's `message`."""
        self.details = details or []
        """daprd's `details`, when it gave any."""

    def to_json(self) -> dict[str, Any]:
        """The error as daprd's JSON body: `errorCode`, `message` and `details`."""
        body: dict[str, Any] = {"errorCode": self.error_code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def from_response(cls, status_code: int, body: bytes) -> DaprAPIError:
        """The error a sidecar answered, read back from its HTTP response."""
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "errorCode" in parsed:
            details = parsed.get("details")
            return cls(
                status_code,
                str(parsed["errorCode"]),
                str(parsed.get("message", "")),
                details=details if isinstance(details, list) else None,
            )
        text = body.decode("utf-8", errors="replace").strip()
        return cls(status_code, "ERR_UNKNOWN", text or f"HTTP {status_code}")
