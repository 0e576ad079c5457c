"""The proxy of bench/invoke_proxy.py: an app with the embedded sidecar, whose HTTPEndpoint
`upstream` points at `BENCH_UPSTREAM_URL`; the subject is `GET /v1.0/invoke/upstream/method/hello`.

With `BENCH_PROXY_CLIENT=aiohttp` or `=httpx` the same proxy sends its
requests with aiohttp's or httpx's client instead of fastapi-dapr's own
(`fastapi_dapr.sidecar.pool`, `http1`): everything else (resolution, headers, streaming the
answer back) is the shipped code, so the difference between the runs is the
HTTP client alone. That is how the client was chosen.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fastapi_dapr import Dapr

UPSTREAM = os.environ["BENCH_UPSTREAM_URL"]
RESOURCES = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
(RESOURCES / "upstream.yaml").write_text(
    "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: upstream}\n"
    f"spec:\n  baseUrl: {UPSTREAM}\n"
)

CLIENT = os.environ.get("BENCH_PROXY_CLIENT", "")

if CLIENT == "httpx":
    import httpx

    from fastapi_dapr import _headers
    from fastapi_dapr.sidecar import proxy as _proxy

    class _HttpxUpstream:
        """What the proxy uses of `_http1.Response`, over an httpx response."""

        uploading = False  # the body is sent whole before the answer is read

        def __init__(self, response: httpx.Response) -> None:
            self.status = response.status_code
            self.headers = _headers.response_headers(response.headers.raw)
            self._chunks = response.aiter_raw()  # closes the response at its end

        def header(self, name: bytes) -> bytes | None:
            return next((value for key, value in self.headers if key == name), None)

        async def chunks(self) -> AsyncIterator[bytes]:
            async for chunk in self._chunks:
                yield chunk

        async def next_chunk(self) -> tuple[bytes, bool]:
            try:
                return await anext(self._chunks), False
            except StopAsyncIteration:
                return b"", True

        def release(self) -> None:
            pass

        def abort(self) -> None:
            pass

    _httpx: list[httpx.AsyncClient] = []

    async def _send_with_httpx(self: Any, target: Any, url: Any, verb: str, headers: Any, body: Any,
                               length: Any, timeout: Any) -> Any:  # fmt: skip
        if not _httpx:
            _httpx.append(httpx.AsyncClient(limits=httpx.Limits(max_connections=100), timeout=None))
        request = _httpx[0].build_request(verb, str(url), headers=headers, content=body)
        return _HttpxUpstream(await _httpx[0].send(request, stream=True))

    _proxy.Upstreams._send = _send_with_httpx  # type: ignore[method-assign]

elif CLIENT == "aiohttp":
    import aiohttp
    import yarl

    from fastapi_dapr import _headers
    from fastapi_dapr.sidecar import proxy as _proxy

    class _AiohttpUpstream:
        """What the proxy uses of `_http1.Response`, over an aiohttp response."""

        uploading = False  # the body is sent whole before the answer is read

        def __init__(self, response: aiohttp.ClientResponse) -> None:
            self._response = response
            self.status = response.status
            self.headers = _headers.response_headers(response.raw_headers)

        def header(self, name: bytes) -> bytes | None:
            return next((value for key, value in self.headers if key == name), None)

        async def chunks(self) -> AsyncIterator[bytes]:
            async for chunk in self._response.content.iter_any():
                yield chunk

        async def next_chunk(self) -> tuple[bytes, bool]:
            chunk = await self._response.content.readany()
            return chunk, not chunk or self._response.content.at_eof()

        def release(self) -> None:
            self._response.release()

        def abort(self) -> None:
            self._response.close()

    _aiohttp: list[aiohttp.ClientSession] = []

    async def _send_with_aiohttp(self: Any, target: Any, url: Any, verb: str, headers: Any, body: Any,
                                 length: Any, timeout: Any) -> Any:  # fmt: skip
        if not _aiohttp:
            _aiohttp.append(
                aiohttp.ClientSession(
                    auto_decompress=False,
                    skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
            )
        response = await _aiohttp[0].request(
            verb, yarl.URL(str(url), encoded=True), headers=headers, data=body, allow_redirects=False
        )
        return _AiohttpUpstream(response)

    _proxy.Upstreams._send = _send_with_aiohttp  # type: ignore[method-assign]

app = FastAPI()
dapr = Dapr(app, app_id="proxy", resources_path=str(RESOURCES))
