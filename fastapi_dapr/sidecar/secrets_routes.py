"""The Dapr API's secrets routes: `GET /v1.0/secrets/{store}/{key}` and `/v1.0/secrets/{store}/bulk`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import Response

from .._exceptions import DaprAPIError
from .._json import go_dumps
from ..secretstores import SecretStore, SecretStoreError
from .api_call import NO_APP_ID, Answer, ApiCall, query_unescape
from .errors import direct_invoke_error, error_response

if TYPE_CHECKING:
    from .runtime import Runtime

__all__: list[str] = []


async def secrets(call: ApiCall, rest: str) -> Answer:
    """One secret, or every secret of the store (reference 7.4)."""
    parts = rest.split("/")
    if len(parts) != 2 or not all(parts):
        return error_response(direct_invoke_error(404, NO_APP_ID))
    store_name, key = (query_unescape(part) for part in parts)
    runtime = call.running
    try:
        found = await (
            read_bulk(runtime, store_name) if parts[1] == "bulk" else read_secret(runtime, store_name, key)
        )
    except DaprAPIError as exc:
        return error_response(exc)
    return Response(go_dumps(found), media_type="application/json")


async def read_secret(runtime: Runtime, store_name: str, key: str) -> dict[str, str]:
    """The secret `key` of the store, or daprd's error (the gRPC API's GetSecret reads it here too)."""
    store = _store(runtime, store_name)
    try:
        return await store.get_secret(key)
    except SecretStoreError as exc:
        message = f"failed getting secret with key {key} from secret store {store_name}: {exc}"
        raise DaprAPIError(500, "ERR_SECRET_GET", message) from None


async def read_bulk(runtime: Runtime, store_name: str) -> dict[str, dict[str, str]]:
    """Every secret of the store, or daprd's error (and the gRPC API's GetBulkSecret's)."""
    store = _store(runtime, store_name)
    try:
        return await store.bulk_get()
    except SecretStoreError as exc:
        message = f"failed getting secrets from secret store {store_name}: {exc}"
        raise DaprAPIError(500, "ERR_SECRET_GET", message) from None


def _store(runtime: Runtime, store_name: str) -> SecretStore:
    if not runtime.secret_stores:
        raise DaprAPIError(500, "ERR_SECRET_STORES_NOT_CONFIGURED", "secret store is not configured")
    store = runtime.secret_stores.get(store_name)
    if store is None:
        # daprd's status for an unknown store is 401.
        raise DaprAPIError(
            401, "ERR_SECRET_STORE_NOT_FOUND", f"failed finding secret store with key {store_name}"
        )
    return store
