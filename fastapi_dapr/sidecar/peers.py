"""Calls between standalone sidecars: the sidecar of another app id, and a call one passed on.

Other app ids are found in the name-resolution file (`name_resolution`). A call
to another app goes from this sidecar to that app's sidecar, at the path
`INTERNAL_PREFIX + method` with that sidecar's token in `SIDECAR_TOKEN_HEADER`
and this app's id in `dapr-caller-app-id`; that sidecar calls its app with its
own `APP_API_TOKEN`. Neither this API's token nor this app's token leaves the process.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from .._call import InvalidMethod, normalize_method
from .._exceptions import DaprAPIError
from .api_call import route_path
from .errors import direct_invoke_error, error_response
from .invocation import invoke_self
from .name_resolution import NameResolutionError, NameResolutionFile
from .proxy import Target

if TYPE_CHECKING:
    from .runtime import Runtime

__all__: list[str] = []

INTERNAL_PREFIX = "/fastapi-dapr/v1/invoke/"
SIDECAR_TOKEN_HEADER = "dapr-sidecar-token"


async def find_peer(names: NameResolutionFile, name: str, namespace: str) -> Target | None:
    """The sidecar that registered app id `name` (`id`, in `namespace`, or `id.namespace`)
    in `names`; None if none did. daprd's error when the file cannot be read."""
    app_id, dot, wanted = name.partition(".")
    wanted = wanted if dot else namespace
    try:
        found = await names.find(app_id)  # the file is read off the event loop
    except NameResolutionError as exc:
        raise DaprAPIError(500, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {name}, err: {exc}") from None
    if found is None or found.namespace != wanted:
        return None
    return Target(
        "app",
        app_id,
        found.base_url + INTERNAL_PREFIX.rstrip("/"),
        headers=((SIDECAR_TOKEN_HEADER, found.token),),
    )


async def from_peer(
    runtime: Runtime | None,
    token: str | None,
    max_body_size: int,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """A call another sidecar passed on: checked by this sidecar's `token`, then given to the app."""
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    given = headers.get(SIDECAR_TOKEN_HEADER, "").encode()
    if runtime is None or token is None or not hmac.compare_digest(given, token.encode()):
        response = JSONResponse(
            {"errorCode": "ERR_FORBIDDEN", "message": "sidecar-to-sidecar calls need the sidecar token"},
            status_code=401,
        )
        await response(scope, receive, send)
        return
    callee = headers.get("dapr-callee-app-id", "")
    caller = headers.get("dapr-caller-app-id", "")
    if callee != runtime.app_id or not caller:
        error = direct_invoke_error(
            404, f"failed to invoke, id: {callee}, err: this sidecar serves app {runtime.app_id!r}"
        )
        await error_response(error)(scope, receive, send)
        return
    try:
        method = normalize_method(route_path(scope)[len(INTERNAL_PREFIX) :])
    except InvalidMethod as exc:
        error = direct_invoke_error(500, f"failed to invoke, id: {callee}, err: invalid method: {exc}")
        await error_response(error)(scope, receive, send)
        return
    child = dict(scope)
    child["headers"] = [
        (name, value) for name, value in scope["headers"] if name != SIDECAR_TOKEN_HEADER.encode()
    ]
    await invoke_self(
        runtime.app,
        child,
        receive,
        send,
        method=method,
        via_header=False,
        api_token_configured=True,  # nothing of the caller's side reaches the app
        app_api_token=runtime.app_api_token,
        app_id=runtime.app_id,
        namespace=runtime.namespace,
        max_body_size=max_body_size,
        caller=(caller, headers.get("dapr-caller-namespace") or runtime.namespace),
    )
