"""The Dapr API's secrets routes: `GET /v1.0/secrets/{store}/{key}` and `/v1.0/secrets/{store}/bulk`."""

from __future__ import annotations

from starlette.responses import Response

from .._exceptions import DaprAPIError
from .._json import go_dumps
from ..secretstores import SecretStoreError
from .api_call import NO_APP_ID, Answer, ApiCall, query_unescape
from .errors import direct_invoke_error, error_response

__all__: list[str] = []


async def secrets(call: ApiCall, rest: str) -> Answer:
    """One secret, or every secret of the store (reference 7.4)."""
    parts = rest.split("/")
    if len(parts) != 2 or not all(parts):
        return error_response(direct_invoke_error(404, NO_APP_ID))
    store_name, key = (query_unescape(part) for part in parts)
    runtime = call.running
    if not runtime.secret_stores:
        return error_response(
            DaprAPIError(500, "ERR_SECRET_STORES_NOT_CONFIGURED", "secret store is not configured")
        )
    store = runtime.secret_stores.get(store_name)
    if store is None:
        # daprd's status for an unknown store is 401.
        return error_response(
            DaprAPIError(
                401, "ERR_SECRET_STORE_NOT_FOUND", f"failed finding secret store with key {store_name}"
            )
        )
    try:
        if parts[1] == "bulk":
            return Response(go_dumps(await store.bulk_get()), media_type="application/json")
        return Response(go_dumps(await store.get_secret(key)), media_type="application/json")
    except SecretStoreError as exc:
        message = (
            f"failed getting secrets from secret store {store_name}: {exc}"
            if parts[1] == "bulk"
            else f"failed getting secret with key {key} from secret store {store_name}: {exc}"
        )
        return error_response(DaprAPIError(500, "ERR_SECRET_GET", message))
