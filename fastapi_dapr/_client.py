"""Talking to a real daprd over HTTP (remote mode), and encoding what is published."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from pydantic_core import to_json, to_jsonable_python

from ._cloudevent import CloudEvent
from ._exceptions import DaprAPIError
from ._json import NO_VALUE

__all__: list[str] = []


def encode_data(data: Any, content_type: str | None) -> tuple[bytes, str, Any]:
    """The body and Content-Type of a publish of `data`, and the JSON value the
    body encodes when it is JSON (`NO_VALUE` otherwise)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), content_type or "application/octet-stream", NO_VALUE
    if isinstance(data, str):
        return data.encode(), content_type or "text/plain", NO_VALUE
    if isinstance(data, CloudEvent):
        body = data.model_dump_json(exclude_none=True).encode()
        return body, content_type or "application/cloudevents+json", NO_VALUE
    value = data.model_dump(mode="json") if isinstance(data, BaseModel) else to_jsonable_python(data)
    return to_json(value), content_type or "application/json", value


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
        params = {f"metadata.{key}": value for key, value in metadata.items()}
        try:
            response = await self._http().post(path, content=body, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise DaprAPIError(
                500,
                "ERR_PUBSUB_PUBLISH_MESSAGE",
                f"the Dapr sidecar at {self.endpoint} could not be reached: {type(exc).__name__}: {exc}",
            ) from exc
        if response.status_code != 204:
            raise DaprAPIError.from_response(response.status_code, response.content)
