"""Talking to a real daprd over HTTP (remote mode)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import httpx

from ._exceptions import DaprAPIError
from ._publishing import FailedEntry, failed_entries

__all__: list[str] = []


class RemoteSidecar:
    """A daprd reached over HTTP at `endpoint` (for instance http://127.0.0.1:3500)."""

    def __init__(self, endpoint: str, *, api_token: str | None = None, timeout: float = 60.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.api_token = api_token
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"dapr-api-token": self.api_token} if self.api_token else {}
            self._client = httpx.AsyncClient(base_url=self.endpoint, headers=headers, timeout=self.timeout)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _post(
        self, path: str, body: bytes, headers: Mapping[str, str], metadata: Mapping[str, str]
    ) -> httpx.Response:
        """POST to daprd, `metadata` as its `metadata.*` parameters; daprd out of reach is
        a publish error."""
        params = {f"metadata.{key}": value for key, value in metadata.items()}
        try:
            return await self._http().post(path, content=body, headers=dict(headers), params=params)
        except httpx.HTTPError as exc:
            raise DaprAPIError(
                500,
                "ERR_PUBSUB_PUBLISH_MESSAGE",
                f"the Dapr sidecar at {self.endpoint} could not be reached: {type(exc).__name__}: {exc}",
            ) from exc

    async def publish(
        self,
        pubsub: str,
        topic: str,
        body: bytes,
        content_type: str,
        metadata: Mapping[str, str],
        traceparent: str = "",
    ) -> None:
        # Each path parameter is escaped whole: daprd unescapes `%2F` back to `/`
        # and reads `+` as a space (reference 1.1).
        path = f"/v1.0/publish/{quote(pubsub, safe='')}/{quote(topic, safe='')}"
        headers = {"content-type": content_type}
        if traceparent:
            headers["traceparent"] = traceparent
        response = await self._post(path, body, headers, metadata)
        if response.status_code != 204:
            raise DaprAPIError.from_response(response.status_code, response.content)

    async def publish_bulk(
        self, pubsub: str, topic: str, body: bytes, metadata: Mapping[str, str]
    ) -> list[FailedEntry]:
        path = f"/v1.0-alpha1/publish/bulk/{quote(pubsub, safe='')}/{quote(topic, safe='')}"
        response = await self._post(path, body, {"content-type": "application/json"}, metadata)
        if response.status_code == 204:
            return []
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 500 and isinstance(answer, dict) and "failedEntries" in answer:
            return failed_entries(answer["failedEntries"])  # daprd's shape: some entries failed
        raise DaprAPIError.from_response(response.status_code, response.content)
