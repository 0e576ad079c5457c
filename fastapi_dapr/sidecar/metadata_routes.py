"""The Dapr API's routes about the sidecar itself: health, metadata, shutdown and metrics."""

from __future__ import annotations

from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response

from .._exceptions import DaprAPIError
from .._json import go_dumps
from .api_call import Answer, ApiCall, query_unescape
from .caller import BodyTooLarge, ClientGone, read_body
from .errors import error_response

__all__: list[str] = []

HEALTH_PATH = "/v1.0/healthz"
OUTBOUND_HEALTH_PATH = "/v1.0/healthz/outbound"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def health(call: ApiCall, rest: str) -> Answer:
    """`GET /v1.0/healthz` (ready: the subscriptions started) and `/v1.0/healthz/outbound`
    (the runtime runs): 204, or daprd's 500."""
    runtime = call.runtime
    if runtime is None or (call.path == HEALTH_PATH and not runtime.ready):
        return JSONResponse(
            {"errorCode": "ERR_HEALTH_NOT_READY", "message": "dapr is not ready"},
            status_code=500,
        )
    return None


async def metadata(call: ApiCall, rest: str) -> Answer:
    """`GET /v1.0/metadata` in daprd's shape."""
    return Response(go_dumps(call.running.metadata()), media_type="application/json")


async def put_metadata(call: ApiCall, rest: str) -> Answer:
    """`PUT /v1.0/metadata/{key}`: the body is the value of `key` in the extended metadata."""
    key = query_unescape(rest)
    limit = call.api.max_body_size
    try:
        body = await read_body(call.receive, call.headers, limit)
    except ClientGone:
        return error_response(
            DaprAPIError(400, "ERR_BODY_READ", "failed to read request body: the client went away")
        )
    except BodyTooLarge:
        body = None
    # daprd keeps any number of values of any size: here they hold the body limit in all.
    if body is None or not call.running.set_extended_metadata(key, body, limit):
        return error_response(
            DaprAPIError(
                413,
                "ERR_METADATA_TOO_LARGE",
                f"the extended metadata (keys and values together) may hold at most {limit} bytes",
            )
        )
    return None


async def shutdown(call: ApiCall, rest: str) -> Answer:
    """`POST /v1.0/shutdown`: daprd answers 204, then stops; the stop runs once the answer is sent."""
    return Response(status_code=204, background=BackgroundTask(call.running.shutdown()))


async def metrics(call: ApiCall, rest: str) -> Answer:
    """`GET /metrics`, in Prometheus' text format, when the API was given its metrics."""
    assert call.api.metrics is not None
    if call.method not in ("GET", "HEAD"):
        return JSONResponse(
            {"errorCode": "ERR_METHOD_NOT_ALLOWED", "message": f"{call.method} {call.path}: use GET"},
            status_code=405,
            headers={"allow": "GET, HEAD"},
        )
    return Response(call.api.metrics.render(), media_type=METRICS_CONTENT_TYPE)
