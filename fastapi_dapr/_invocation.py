"""What service invocation is allowed to reach, and what `Dapr.invoke` returns.

Kept free of any HTTP client import: remote mode and the app side load it too.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from starlette.datastructures import Headers

from ._media import parameter

__all__ = ["InvocationSettings", "InvokeResponse"]


@dataclasses.dataclass(frozen=True)
class InvocationSettings:
    """Where `/v1.0/invoke` and `Dapr.invoke` may send requests, and how.

    HTTPEndpoint resources and the `apps` table are configuration the operator
    wrote, and reach any address; URL targets reach only what `allowed_urls`
    allows.
    """

    apps: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The name-resolution table, app id to base URL (`{"orders": "http://127.0.0.1:8001"}`).
    Another app id is invoked at `base URL + "/" + method`, with Dapr's caller and callee
    headers."""
    allowed_urls: Sequence[str] = ()
    """The URL targets (`/v1.0/invoke/https%3A%2F%2Fhost/method/x`) that may be invoked.
    Each entry is a host (`api.example.com`), a host pattern (`*.example.com`), or a URL
    prefix (`https://api.example.com/v1/`, matched on scheme, host, port and whole path
    segments). Empty by default: every URL target is refused with 403, so the app's port
    is never an open proxy."""
    allow_private_addresses: bool = False
    """Whether an allowed URL target may resolve to a loopback, link-local (169.254.0.0/16,
    the cloud metadata address), private or otherwise non-public address. Checked on every
    address the name resolves to, on the connection actually made."""
    timeout: float | None = None
    """Seconds until the answer's headers arrive; None: no limit, as in daprd."""
    connect_timeout: float = 15.0
    """Seconds to connect (daprd's 15)."""
    pool_size: int = 100
    """Connections open at once per target."""
    max_line_size: int = 16 * 1024
    """The longest line (request, status or header line, chunk-size line, trailer) a
    request or an answer may have, in bytes: an answer over it is a malformed answer
    (500), a request a 400."""
    max_head_size: int = 64 * 1024
    """The largest head (and trailers) a request or an answer may have, in bytes: 500 or
    400 beyond, as for `max_line_size`."""

    def __post_init__(self) -> None:
        if self.max_line_size < 1024 or self.max_head_size < self.max_line_size:
            raise ValueError("max_line_size must be at least 1024 bytes, and max_head_size at least that")
        for app_id, url in self.apps.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"apps[{app_id!r}]: {url!r} is not an http:// or https:// base URL")
        if isinstance(self.allowed_urls, str):
            raise TypeError("allowed_urls is a sequence of hosts or URL prefixes, not one string")


class InvokeResponse:
    """The answer of an invocation: status, headers and body, as the target sent them.

    `Dapr.invoke(...)` reads the body (`content`, `text`, `json()`). With
    `stream=True` it is not read: iterate `aiter_bytes()`, and close the
    response (`async with` or `aclose()`) to give the connection back.
    """

    def __init__(
        self,
        status_code: int,
        headers: Sequence[tuple[bytes, bytes]],
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.status_code = status_code
        """The target's HTTP status."""
        self.headers = Headers(raw=list(headers))
        """The target's headers, case-insensitive (Starlette's `Headers`)."""
        self._chunks = chunks
        self._close = close
        self._content: bytes | None = None
        self._consumed = False

    def __repr__(self) -> str:
        return f"<InvokeResponse [{self.status_code}]>"

    @property
    def is_success(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status_code < 300

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk, as it arrives (once)."""
        if self._content is not None:
            yield self._content
            return
        if self._consumed:
            raise RuntimeError("the body of this response was already read")
        self._consumed = True
        try:
            async for chunk in self._chunks:
                if chunk:
                    yield chunk
        finally:
            await self.aclose()

    async def aread(self) -> bytes:
        """The whole body, read once and kept (with `stream=True`; without, already read)."""
        if self._content is None:
            self._content = b"".join([chunk async for chunk in self.aiter_bytes()])
        return self._content

    @property
    def content(self) -> bytes:
        """The body; RuntimeError while a streamed body has not been read."""
        if self._content is None:
            raise RuntimeError("the body was not read: use `await response.aread()` or aiter_bytes()")
        return self._content

    @property
    def text(self) -> str:
        """The body decoded with the Content-Type's charset, UTF-8 without one."""
        charset = parameter(self.headers.get("content-type", ""), "charset")
        return self.content.decode("utf-8" if charset is None else charset)

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.content)

    async def aclose(self) -> None:
        """Give the connection back (a streamed response); closing twice is harmless."""
        close, self._close = self._close, _nothing
        await close()

    async def __aenter__(self) -> InvokeResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _nothing() -> None:
    return None
