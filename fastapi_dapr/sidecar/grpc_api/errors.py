"""daprd's gRPC errors: its status codes and `google.rpc` details, carried in the
`grpc-status-details-bin` trailer as grpc-go's `status.WithDetails` sends them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

__all__: list[str] = []

DOMAIN = "dapr.io"  # daprd's ErrorInfo domain
DETAILS_KEY = "grpc-status-details-bin"


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
