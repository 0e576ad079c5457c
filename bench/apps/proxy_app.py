"""The proxy of bench/invoke_proxy.py: an app with the embedded sidecar, whose HTTPEndpoint
`upstream` points at `BENCH_UPSTREAM_URL`; the subject is `GET /v1.0/invoke/upstream/method/hello`.

With `BENCH_PROXY_CLIENT=httpx` the same proxy sends its requests with
`httpx.AsyncClient` instead of aiohttp: everything else (resolution, headers,
streaming the answer back) is the shipped code, so the difference between the
two runs is the HTTP client alone. That is how the client was chosen.
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

if os.environ.get("BENCH_PROXY_CLIENT") == "httpx":
    import httpx

    from fastapi_dapr import _proxy

    class _HttpxUpstream:
        """What `_proxy.Upstream` offers, over an httpx response."""

        def __init__(self, response: httpx.Response) -> None:
            self._response = response
            self.status = response.status_code
            self.headers = _proxy.response_headers(response.headers.raw)

            self._chunks = response.aiter_raw()  # closes the response at its end

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

    _client: list[httpx.AsyncClient] = []

    async def _send_with_httpx(self: Any, target: Any, session: Any, url: Any, verb: str, headers: Any,
                               body: Any, timeout: Any) -> Any:  # fmt: skip
        if not _client:
            _client.append(httpx.AsyncClient(limits=httpx.Limits(max_connections=100), timeout=None))
        client = _client[0]
        request = client.build_request(verb, str(url), headers=headers, content=body)
        return _HttpxUpstream(await client.send(request, stream=True))

    _proxy.Upstreams._send = _send_with_httpx  # type: ignore[method-assign]

app = FastAPI()
dapr = Dapr(app, app_id="proxy", resources_path=str(RESOURCES))
