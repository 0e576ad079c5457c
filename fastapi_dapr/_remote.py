"""`RemoteBackend`: `Dapr` under a real daprd, reached over HTTP (remote mode).

One httpx client talks to daprd for everything: publishing, bulk publishing and
service invocation. Nothing of the sidecar side is loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from ._backend import Backend
from ._error_codes import PubSubErrors
from ._exceptions import DaprAPIError
from ._headers import forwardable, response_headers
from ._invocation import InvokeResponse
from ._publishing import FailedEntry, bulk_body, encode_data, failed_entries, metadata_problem
from ._trace import header_pairs

if TYPE_CHECKING:
    from ._backend import Settings
    from ._call import Call
    from ._subscription import TopicSubscription

__all__: list[str] = []

PATH_SAFE = "/:@!$&'()*+,;=-._~"  # what Go leaves unescaped in a path
_CLIENT_DEFAULTS = frozenset({"accept", "accept-encoding", "connection", "user-agent"})  # httpx's
CONNECT_TIMEOUT = 15.0  # daprd's, for a connection (InvocationSettings.connect_timeout)


def check_metadata(pubsub: str, metadata: Mapping[str, str] | None) -> None:
    """Refuse, before daprd takes it, metadata that would fail every delivery (in embedded
    mode the runtime refuses it, on every path)."""
    if not metadata:
        return
    problem = metadata_problem(metadata)
    if problem is not None:
        raise PubSubErrors.bad_metadata(pubsub, metadata, problem)


class RemoteBackend(Backend):
    """A daprd reached over HTTP at `endpoint` (for instance http://127.0.0.1:3500).

    With `api_token`, every request carries it in `dapr-api-token` (and only it).
    `timeout` bounds a publish; an invocation has its own (`Dapr.invoke`).
    """

    def __init__(self, endpoint: str, *, api_token: str | None = None, timeout: float = 60.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.api_token = api_token or None
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"dapr-api-token": self.api_token} if self.api_token else {}
            self._client = httpx.AsyncClient(base_url=self.endpoint, headers=headers, timeout=self.timeout)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    @asynccontextmanager
    async def lifespan(
        self,
        app_lifespan: AbstractAsyncContextManager[Any],
        subscriptions: list[TopicSubscription],  # daprd reads them at /dapr/subscribe
        settings: Settings,
    ) -> AsyncIterator[Any]:
        try:
            async with app_lifespan as state:
                yield state
        finally:
            await self.close()

    # -- publishing ------------------------------------------------------------------------------

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
        data: Any,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> str:
        check_metadata(pubsub, metadata)
        body, media_type, _ = encode_data(data, content_type)
        # Each path parameter is escaped whole: daprd unescapes `%2F` back to `/`
        # and reads `+` as a space (reference 1.1).
        path = f"/v1.0/publish/{quote(pubsub, safe='')}/{quote(topic, safe='')}"
        headers = {"content-type": media_type}
        response = await self._post(path, body, headers, dict(metadata or {}))
        if response.status_code != 204:
            raise DaprAPIError.from_response(response.status_code, response.content)
        return ""  # daprd does not say which id the broker gave

    async def publish_bulk(
        self, pubsub: str, topic: str, entries: Iterable[Any], metadata: Mapping[str, str] | None
    ) -> list[FailedEntry]:
        entries = list(entries)
        check_metadata(pubsub, metadata)
        for entry in entries:
            check_metadata(pubsub, getattr(entry, "metadata", None))
        body = bulk_body(entries)
        path = f"/v1.0-alpha1/publish/bulk/{quote(pubsub, safe='')}/{quote(topic, safe='')}"
        response = await self._post(path, body, {"content-type": "application/json"}, dict(metadata or {}))
        if response.status_code == 204:
            return []
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 500 and isinstance(answer, dict) and "failedEntries" in answer:
            return failed_entries(answer["failedEntries"])  # daprd's shape: some entries failed
        raise DaprAPIError.from_response(response.status_code, response.content)

    # -- invocation ------------------------------------------------------------------------------

    async def invoke(self, target: str, call: Call) -> InvokeResponse:
        """`/v1.0/invoke` on daprd, which resolves `target`; the answer once its headers came."""
        headers = [*forwardable(call.headers), *header_pairs(call.trace)]
        if self.api_token:
            # To daprd, this app's own sidecar: its token, and only it (a caller's, passed on in
            # `headers=dict(request.headers)`, would be the one daprd reads). The client adds it.
            headers = [(name, value) for name, value in headers if name != "dapr-api-token"]
        if call.streamed and call.declared is not None:
            headers.append(("content-length", str(call.declared)))  # httpx then sends no chunks
        path = f"/v1.0/invoke/{quote(target, safe='')}/method/{quote(call.method, safe=PATH_SAFE)}"
        client = self._http()
        where = client.base_url.netloc.decode("ascii")
        request = client.build_request(
            call.verb,
            path + ("?" + call.query if call.query else ""),
            headers=headers,
            content=call.body,
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
        )
        # What is sent is what the caller gave: not httpx's own defaults (an Accept-Encoding
        # would have the target compress an answer the caller gets as it came).
        given = {name for name, _ in headers}
        for name in _CLIENT_DEFAULTS - given:
            del request.headers[name]
        try:
            # The timeout is until the answer's headers came, the body sent included.
            response = await asyncio.wait_for(client.send(request, stream=True), call.timeout)
        except asyncio.TimeoutError:
            raise _invoke_error(f"no answer from {where} within {call.timeout}s") from None
        except httpx.HTTPError as exc:
            raise _invoke_error(_describe(exc, where)) from exc
        return InvokeResponse(
            response.status_code,
            response_headers(response.headers.raw, response.status_code),
            _chunks(response),
            response.aclose,
        )


async def _chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it came (no content decoding: it is passed on as daprd sent it); one cut
    short is an `OSError`, as a socket's."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        raise ConnectionError(f"daprd's answer broke off: {exc}") from exc


def _invoke_error(message: str) -> DaprAPIError:
    return DaprAPIError(500, "ERR_DIRECT_INVOKE", f"failed to invoke, id: daprd, err: {message}")


def _describe(exc: httpx.HTTPError, where: str) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"could not connect to {where} within {CONNECT_TIMEOUT}s"
    if isinstance(exc, httpx.ConnectError):
        return f"could not connect to {where}: {exc}"
    return f"{where}: {type(exc).__name__}: {exc}"
