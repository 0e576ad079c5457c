"""daprd's API errors, built as daprd builds them (reference 1.3), their HTTP answer, and
the words (`describe`) for the failures they report."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from .._exceptions import DaprAPIError
from .._json import go_dumps
from .http1 import UpstreamError

__all__: list[str] = []

_RESOURCE_INFO = "type.googleapis.com/google.rpc.ResourceInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def error_body(error: DaprAPIError) -> bytes:
    """`error` as daprd writes it: a Go struct, so `errorCode`, `message` and `details` in
    that order (not sorted); inside `details`, Go maps, so sorted keys (reference 1.3)."""
    fields = [b'"%s":%s' % (name.encode(), go_dumps(value)) for name, value in error.to_json().items()]
    return b"{" + b",".join(fields) + b"}"


def error_response(error: DaprAPIError) -> Response:
    """The HTTP answer for `error`, serialised as daprd's Go code does."""
    return Response(error_body(error), status_code=error.status_code, media_type="application/json")


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


def direct_invoke_error(status_code: int, message: str) -> DaprAPIError:
    """Service invocation's older-style error: no details (reference 1.3, last note)."""
    return DaprAPIError(status_code, "ERR_DIRECT_INVOKE", message)


def describe(exc: BaseException, peer: tuple[str | None, int | None] | None = None) -> str:
    """A failure in a few words, for an error message or a log.

    Without `peer`: the OS's words for an `OSError` that has them, else the exception's
    own. With `peer` (the host and port talked to): which step failed with it, TLS,
    resolving the name, connecting or the answer, as the proxy reports a transport failure."""
    if peer is None:
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        if isinstance(exc, asyncio.TimeoutError):
            return "no answer within the timeout"
        return str(exc) or type(exc).__name__
    host, port = peer
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {where} was refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"the host {host} could not be resolved: {exc.strerror}"
    if isinstance(exc, UpstreamError):
        return f"{where}: {exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer from {where} within the timeout"
    if isinstance(exc, OSError):
        return f"could not connect to {where}: {exc.strerror or exc}"
    return f"{type(exc).__name__} talking to {where}: {exc}"
