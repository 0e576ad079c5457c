"""`RemoteBackend`: `Dapr` under a real daprd, reached over HTTP (remote mode).

One httpx client talks to daprd for publishing and bulk publishing; service invocation
has its own httpx transport (connections, no client machinery), so that a call is sent
as the caller gave it. Nothing of the sidecar side is loaded.
"""

from __future__ import annotations

import asyncio
import socket
import typing
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from ._backend import Backend
from ._error_codes import PubSubErrors
from ._exceptions import DaprAPIError
from ._go import PATH_SAFE
from ._headers import forwardable, response_headers
from ._invocation import InvocationSettings, InvokeResponse
from ._publishing import FailedEntry, bulk_body, encode_data, failed_entries, metadata_problem
from ._trace import header_pairs

if TYPE_CHECKING:
    from ._backend import Settings
    from ._call import Call
    from ._subscription import TopicSubscription

__all__: list[str] = []

# daprd's connection timeout and the longest answer line and head: embedded mode's defaults.
_DEFAULTS = InvocationSettings()
CONNECT_TIMEOUT = _DEFAULTS.connect_timeout
LINE_LIMIT = _DEFAULTS.max_line_size
HEAD_LIMIT = _DEFAULTS.max_head_size


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
        self._transport: httpx.AsyncHTTPTransport | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"dapr-api-token": self.api_token} if self.api_token else {}
            self._client = httpx.AsyncClient(base_url=self.endpoint, headers=headers, timeout=self.timeout)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.aclose()

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

    def _invoker(self) -> httpx.AsyncHTTPTransport:
        # The invocation's own connections, below httpx's client: a caller's request is sent
        # as given, with no cookie jar, no proxy or .netrc from the environment, no default
        # headers, no redirect followed and no content decoding (as the HTTP/1.1 client of
        # embedded mode, which remote mode used before).
        if self._transport is None:
            self._transport = httpx.AsyncHTTPTransport(trust_env=False)
        return self._transport

    async def invoke(self, target: str, call: Call) -> InvokeResponse:
        """`/v1.0/invoke` on daprd, which resolves `target`; the answer once its headers came."""
        headers = [*forwardable(call.headers), *header_pairs(call.trace)]
        if self.api_token:
            # To daprd, this app's own sidecar: its token, and only it (a caller's, passed on in
            # `headers=dict(request.headers)`, would be the one daprd reads).
            headers = [(name, value) for name, value in headers if name != "dapr-api-token"]
            headers.append(("dapr-api-token", self.api_token))
        body = call.body
        if call.streamed and call.declared is not None:
            headers.append(("content-length", str(call.declared)))  # httpx then sends no chunks
            body = _counted(typing.cast("AsyncIterator[bytes]", body), call.declared)
        path = f"/v1.0/invoke/{quote(target, safe='')}/method/{quote(call.method, safe=PATH_SAFE)}"
        url = httpx.URL(self.endpoint + path + ("?" + call.query if call.query else ""))
        where = url.netloc.decode("ascii")
        request = httpx.Request(
            call.verb,
            url,
            # Latin-1 as field_problem allows it; surrounding whitespace is no part of a value.
            headers=[
                (name.encode("latin-1"), value.strip(" \t").encode("latin-1")) for name, value in headers
            ],
            content=body,
            extensions={"timeout": httpx.Timeout(None, connect=CONNECT_TIMEOUT).as_dict()},
        )
        try:
            # The timeout is until the answer's headers came, the body sent included.
            response = await asyncio.wait_for(self._invoker().handle_async_request(request), call.timeout)
        except asyncio.TimeoutError:
            raise _invoke_error(
                target, 500, f"no answer from daprd at {where} within {call.timeout}s"
            ) from None
        except _BodyLength as exc:
            raise _invoke_error(target, 400, str(exc)) from None
        except Exception as exc:
            raise _invoke_error(target, 500, _describe(exc, url)) from exc
        problem = _answer_problem(response)
        if problem is not None:
            await response.aclose()
            raise _invoke_error(target, 500, f"daprd at {where}: the answer is not valid HTTP/1.1: {problem}")
        return InvokeResponse(
            response.status_code,
            response_headers(response.headers.raw, response.status_code),
            _chunks(response),
            response.aclose,
        )


class _BodyLength(Exception):
    """A streamed body not of the length it declared: refused (400), as embedded mode's client does."""


async def _counted(body: AsyncIterator[bytes], declared: int) -> AsyncIterator[bytes]:
    sent = 0
    async for chunk in body:
        sent += len(chunk)
        if sent > declared:
            raise _BodyLength(f"the body is longer than the {declared} bytes it declared")
        yield chunk
    if sent != declared:
        raise _BodyLength(f"the body ended after {sent} of the {declared} bytes it declared")


def _answer_problem(response: httpx.Response) -> str | None:
    """What the strict HTTP/1.1 client remote mode used before refused in an answer's head
    and httpx's parser lets through: the same limits, the framing as Go's client allows it."""
    version = response.extensions.get("http_version", b"HTTP/1.1")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return f"{version.decode('ascii', 'replace')} is not HTTP/1.1"
    if not 100 <= response.status_code <= 599:
        return f"{response.status_code:03d} is not a status code (HTTP's are 100 to 599)"
    raw = response.headers.raw
    size = 15 + len(response.extensions.get("reason_phrase", b""))
    framing: list[bytes] = []
    for name, value in raw:
        if len(name) + len(value) > LINE_LIMIT - 4:
            return f"a header line is longer than {LINE_LIMIT} bytes"
        size += len(name) + len(value) + 4
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding"):
            framing.append(lower)
    if size > HEAD_LIMIT:
        return f"the answer's head is larger than {HEAD_LIMIT} bytes"
    if b"transfer-encoding" in framing and b"content-length" in framing:
        return "Transfer-Encoding can't be present with Content-Length"
    return None


async def _chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it came (no content decoding: it is passed on as daprd sent it); one cut
    short is an `OSError`, as a socket's."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.TransportError as exc:
        raise ConnectionError(f"daprd's answer broke off: {exc}") from exc


def _invoke_error(target: str, status: int, message: str) -> DaprAPIError:
    """daprd's invocation error, naming the app id or endpoint invoked; `message` says what
    went wrong on the way to daprd, which is what this side sees."""
    return DaprAPIError(status, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {target}, err: {message}")


def _describe(exc: Exception, url: httpx.URL) -> str:
    where = "daprd at " + url.netloc.decode("ascii")
    if isinstance(exc, httpx.ConnectTimeout):
        return f"could not connect to {where} within {CONNECT_TIMEOUT}s"
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, socket.gaierror):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, socket.gaierror):
            return f"the host {url.host} could not be resolved: {cause.strerror}"
        return f"could not connect to {where}: {exc}"
    if isinstance(exc, httpx.HTTPError):
        return f"{where}: {type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} talking to {where}: {exc}"  # the caller's body failed
