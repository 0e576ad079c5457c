"""daprd's gRPC errors: its status codes and `google.rpc` details, carried in the
`grpc-status-details-bin` trailer as grpc-go's `status.WithDetails` sends them.

`abort_api_error` answers a `DaprAPIError` (the HTTP API's errors) as daprd's gRPC API
answers the same error: each error carries its own gRPC code in daprd (dapr/kit's errors
and the older `messages.APIError` both hold an HTTP and a gRPC code), so the code is
looked up by the error's ErrorInfo reason or its errorCode, never derived from the HTTP
status. Kit errors send their ResourceInfo and ErrorInfo details; older-style errors,
which have none, send none (their `GRPCStatus()` is a bare code and message). An
errorCode not in the table answers UNKNOWN, as grpc-go answers an error that is no status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from ..._exceptions import DaprAPIError

__all__: list[str] = []

DOMAIN = "dapr.io"  # daprd's ErrorInfo domain
DETAILS_KEY = "grpc-status-details-bin"


class Undecodable(Exception):
    """A request that is not a message of its RPC's type: grpc-go's INTERNAL error for it."""

    def __init__(self, problem: str, *, streamed: bool) -> None:
        what = "failed to unmarshal the received message" if streamed else "error unmarshalling request"
        super().__init__(f"grpc: {what}: {problem}")


def status_details(code: grpc.StatusCode, message: str, details: Sequence[Any]) -> bytes:
    """A serialized `google.rpc.Status` of `code`, `message` and the protobuf `details`."""
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    serialized: bytes = status.SerializeToString()
    return serialized


def error_info(reason: str, metadata: Mapping[str, str] | None = None) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))


async def abort(
    context: Any,
    code: grpc.StatusCode,
    message: str,
    details: Sequence[Any] = (),
) -> NoReturn:
    """End the call with `code`, `message` and rich `details`, as daprd does."""
    trailer = ((DETAILS_KEY, status_details(code, message, details)),) if details else ()
    await context.abort(code, message, trailing_metadata=trailer)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def abort_api_error(context: Any, exc: DaprAPIError) -> NoReturn:
    """End the call with daprd's gRPC answer for `exc`: its code, message and details."""
    await abort(context, grpc_code(exc), exc.message, detail_messages(exc.details))


def grpc_code(exc: DaprAPIError) -> grpc.StatusCode:
    """daprd's gRPC code for `exc`: by its ErrorInfo reason (kit errors sharing an
    errorCode differ in reason), else by errorCode and HTTP status, else by errorCode."""
    for detail in exc.details:
        if detail.get("@type") == _ERROR_INFO and detail.get("reason") in BY_REASON:
            return BY_REASON[detail["reason"]]
    code = BY_STATUS.get((exc.error_code, exc.status_code)) or BY_ERROR_CODE.get(exc.error_code)
    return code or grpc.StatusCode.UNKNOWN


def detail_messages(details: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The protobuf messages of details in the HTTP JSON shape (`@type` and the fields);
    types other than ErrorInfo and ResourceInfo are none of daprd's answers here: skipped."""
    messages: list[Any] = []
    for detail in details:
        kind = detail.get("@type")
        if kind == _ERROR_INFO:
            metadata = detail.get("metadata") or {}
            messages.append(
                error_details_pb2.ErrorInfo(
                    reason=str(detail.get("reason", "")),
                    domain=str(detail.get("domain", DOMAIN)),
                    metadata={str(key): str(value) for key, value in metadata.items()},
                )
            )
        elif kind == _RESOURCE_INFO:
            messages.append(
                error_details_pb2.ResourceInfo(
                    resource_type=str(detail.get("resource_type", "")),
                    resource_name=str(detail.get("resource_name", "")),
                    owner=str(detail.get("owner", "")),
                    description=str(detail.get("description", "")),
                )
            )
    return messages


_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RESOURCE_INFO = "type.googleapis.com/google.rpc.ResourceInfo"

_C = grpc.StatusCode

# Kit errors (pkg/api/errors): their ErrorInfo reason -> their gRPC code.
BY_REASON: dict[str, grpc.StatusCode] = {
    "DAPR_PUBSUB_NOT_FOUND": _C.INVALID_ARGUMENT,
    "DAPR_PUBSUB_TEST_NOT_FOUND": _C.NOT_FOUND,
    "DAPR_PUBSUB_NOT_CONFIGURED": _C.FAILED_PRECONDITION,
    "DAPR_PUBSUB_NAME_EMPTY": _C.INVALID_ARGUMENT,
    "DAPR_PUBSUB_TOPIC_NAME_EMPTY": _C.INVALID_ARGUMENT,
    "DAPR_PUBSUB_METADATA_DESERIALIZATION": _C.INVALID_ARGUMENT,
    "DAPR_PUBSUB_CLOUD_EVENT_CREATION": _C.INVALID_ARGUMENT,
    "DAPR_PUBSUB_FORBIDDEN": _C.PERMISSION_DENIED,
    "DAPR_PUBSUB_PUBLISH_MESSAGE": _C.INTERNAL,
    "DAPR_PUBSUB_MARSHAL_ENVELOPE": _C.INVALID_ARGUMENT,
    "DAPR_PUBSUB_MARSHAL_EVENTS": _C.INVALID_ARGUMENT,
    "DAPR_PUBSUB_UNMARSHAL_EVENTS": _C.INVALID_ARGUMENT,
    "DAPR_STATE_NOT_FOUND": _C.INVALID_ARGUMENT,
    "DAPR_STATE_NOT_CONFIGURED": _C.FAILED_PRECONDITION,
    # The jobs API with no scheduler: the client's plain error, so Unknown, which daprd makes Internal.
    "DAPR_SCHEDULER_SCHEDULE_JOB": _C.INTERNAL,
    "DAPR_SCHEDULER_GET_JOB": _C.INTERNAL,
    "DAPR_SCHEDULER_DELETE_JOB": _C.INTERNAL,
    "DAPR_SCHEDULER_LIST_JOBS": _C.INTERNAL,
}

# Older-style errors (pkg/messages) whose errorCode has one gRPC code per HTTP status.
BY_STATUS: dict[tuple[str, int], grpc.StatusCode] = {
    ("ERR_DIRECT_INVOKE", 404): _C.NOT_FOUND,  # ErrDirectInvokeNoAppID
    ("ERR_DIRECT_INVOKE", 413): _C.RESOURCE_EXHAUSTED,  # the body limit: grpc's own code for it
    ("ERR_PUBSUB_PUBLISH_MESSAGE", 413): _C.RESOURCE_EXHAUSTED,
}

# errorCode -> gRPC code: older-style errors, and the kit errors' legacy tags.
BY_ERROR_CODE: dict[str, grpc.StatusCode] = {
    "ERR_PUBSUB_NOT_FOUND": _C.INVALID_ARGUMENT,
    "ERR_PUBSUB_NOT_CONFIGURED": _C.FAILED_PRECONDITION,
    "ERR_PUBSUB_EMPTY": _C.INVALID_ARGUMENT,
    "ERR_TOPIC_NAME_EMPTY": _C.INVALID_ARGUMENT,
    "ERR_PUBSUB_REQUEST_METADATA": _C.INVALID_ARGUMENT,
    "ERR_PUBSUB_CLOUD_EVENTS_SER": _C.INVALID_ARGUMENT,
    "ERR_PUBSUB_EVENTS_SER": _C.INVALID_ARGUMENT,
    "ERR_PUBSUB_FORBIDDEN": _C.PERMISSION_DENIED,
    "ERR_PUBSUB_PUBLISH_MESSAGE": _C.INTERNAL,
    "ERR_STATE_STORE_NOT_CONFIGURED": _C.FAILED_PRECONDITION,
    "ERR_DIRECT_INVOKE": _C.INTERNAL,
    "ERR_SECRET_STORES_NOT_CONFIGURED": _C.FAILED_PRECONDITION,
    "ERR_SECRET_STORE_NOT_FOUND": _C.INVALID_ARGUMENT,
    "ERR_SECRET_GET": _C.INTERNAL,
    "ERR_BODY_READ": _C.INVALID_ARGUMENT,
    "ERR_MALFORMED_REQUEST": _C.INVALID_ARGUMENT,
    "ERR_API_UNIMPLEMENTED": _C.UNIMPLEMENTED,
    "ERR_HEALTH_NOT_READY": _C.INTERNAL,
    "ERR_INVOKE_OUTPUT_BINDING": _C.INTERNAL,
    "ERR_CONFIGURATION_STORE_NOT_CONFIGURED": _C.FAILED_PRECONDITION,
    "ERR_ACTOR_NO_PLACEMENT": _C.UNAVAILABLE,
    "ERR_LOCK_STORE_NOT_CONFIGURED": _C.FAILED_PRECONDITION,
    "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED": _C.INTERNAL,
    "ERR_CONVERSATION_NOT_FOUND": _C.INVALID_ARGUMENT,
    # Not daprd's: this sidecar's own errors.
    "ERR_SIDECAR_NOT_STARTED": _C.UNAVAILABLE,
    "ERR_METADATA_TOO_LARGE": _C.RESOURCE_EXHAUSTED,
}


def from_http_status(status: int, detail: str) -> tuple[grpc.StatusCode, str, list[Any]]:
    """daprd's `ErrorFromHTTPResponseCode`: the gRPC code of an HTTP status, its text as the
    message, and an ErrorInfo with the status and `detail` (cut at 64 characters, as daprd)."""
    from http import HTTPStatus

    code = _FROM_HTTP.get(status, grpc.StatusCode.UNKNOWN)
    try:
        text = HTTPStatus(status).phrase
    except ValueError:
        text = ""
    info = error_info(text, {"http.code": str(status), "http.error_message": detail[:63]})
    return code, text, [info]


_FROM_HTTP = {
    408: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.UNKNOWN,
    400: grpc.StatusCode.INTERNAL,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    403: grpc.StatusCode.PERMISSION_DENIED,
    401: grpc.StatusCode.UNAUTHENTICATED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
