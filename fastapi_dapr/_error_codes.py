"""daprd's pub/sub error catalog (reference 1.3): each error built as daprd builds it, with
the `details` of Dapr's errors kit.

On the app side because remote mode refuses, in daprd's words, publish metadata daprd would
take and then fail every delivery with; the embedded sidecar answers with the same errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._exceptions import DaprAPIError

__all__: list[str] = []

_RESOURCE_INFO = "type.googleapis.com/google.rpc.ResourceInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def kit_error(
    status_code: int,
    error_code: str,
    reason: str,
    message: str,
    metadata: Mapping[str, str],
    pubsub: str | None,
) -> DaprAPIError:
    details: list[dict[str, Any]] = []
    if pubsub is not None:
        details.append(
            {
                "@type": _RESOURCE_INFO,
                "description": message,
                "owner": "",
                "resource_name": pubsub,
                "resource_type": "pubsub",
            }
        )
    details.append({"@type": _ERROR_INFO, "domain": "dapr.io", "metadata": dict(metadata), "reason": reason})
    return DaprAPIError(status_code, error_code, message, details=details)


class PubSubErrors:
    """daprd's pub/sub errors, one constructor per row of reference 1.3's table."""

    @staticmethod
    def not_found(pubsub: str, metadata: Mapping[str, str]) -> DaprAPIError:
        return kit_error(
            404,
            "ERR_PUBSUB_NOT_FOUND",
            "DAPR_PUBSUB_NOT_FOUND",
            f"pubsub {pubsub} is not found",
            metadata,
            None,
        )

    @staticmethod
    def not_configured(pubsub: str, metadata: Mapping[str, str]) -> DaprAPIError:
        return kit_error(
            400,
            "ERR_PUBSUB_NOT_CONFIGURED",
            "DAPR_PUBSUB_NOT_CONFIGURED",
            f"pubsub {pubsub} is not configured",
            metadata,
            None,
        )

    @staticmethod
    def topic_empty(pubsub: str, metadata: Mapping[str, str]) -> DaprAPIError:
        return kit_error(
            404,
            "ERR_TOPIC_NAME_EMPTY",
            "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
            f"topic is empty in pubsub {pubsub}",
            metadata,
            pubsub,
        )

    @staticmethod
    def bad_metadata(pubsub: str, metadata: Mapping[str, str], error: str) -> DaprAPIError:
        return kit_error(
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
            "DAPR_PUBSUB_METADATA_DESERIALIZATION",
            f"failed deserializing metadata. Error: {error}",
            metadata,
            pubsub,
        )

    @staticmethod
    def cloud_event_creation(pubsub: str, app_id: str, error: str) -> DaprAPIError:
        # daprd answers 500 for this caller mistake; 400 here (docs: differences).
        return kit_error(
            400,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
            "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
            "cannot create cloudevent",
            {"appID": app_id, "error": error},
            pubsub,
        )

    @staticmethod
    def forbidden(pubsub: str, topic: str, app_id: str) -> DaprAPIError:
        message = f"topic {topic} is not allowed for app id {app_id}"
        return kit_error(
            403,
            "ERR_PUBSUB_FORBIDDEN",
            "DAPR_PUBSUB_FORBIDDEN",
            message,
            {"topic": topic, "error": message},
            pubsub,
        )

    @staticmethod
    def publish_failed(pubsub: str, topic: str, error: str, status_code: int = 500) -> DaprAPIError:
        return kit_error(
            status_code,
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            "DAPR_PUBSUB_PUBLISH_MESSAGE",
            f"error when publishing to topic {topic} in pubsub {pubsub}: {error}",
            {"topic": topic, "error": error},
            pubsub,
        )
