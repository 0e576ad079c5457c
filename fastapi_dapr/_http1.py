"""A lean HTTP/1.1 client for the invocation proxy: keep-alive pools, streaming both ways.

Why not a general client: `bench/invoke_proxy.py` measured the proxy on httpx
at about 0.05 of the upstream's direct throughput, and on aiohttp's client at
about 0.6, most of its extra CPU spent in the client's per-request machinery.
The proxy needs little of that machinery (no cookies, no automatic redirects,
no decompression, no proxies from the environment), so this module does the
protocol itself on asyncio: one `write` per request, a response parser over
the received bytes, and flow control both ways.

Addresses are resolved here, checked by the pool's `check` before any
connection is made, and connected to as resolved (a name cannot be rebound
between the check and the connection). TLS uses the pool's context with the
host name for SNI and verification.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Callable, Sequence

__all__: list[str] = []

Headers = list[tuple[bytes, bytes]]
_HIGH_WATER = 64 * 1024  # bytes buffered from the upstream before reading pauses
_MAX_HEAD = 64 * 1024  # largest response head accepted
_NO_BODY_STATUS = frozenset({204, 304})
_HEX = b"0123456789abcdefABCDEF"


class UpstreamError(OSError):
    """The upstream broke the exchange (closed early, sent something that is not HTTP)."""


class ConnectTimeout(UpstreamError):
    """No connection could be made within the connect timeout (nothing was sent)."""


class _NotSent(UpstreamError):
    """The connection was found closed before anything of the request was written."""


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # Go's isReplayable


class Refused(Exception):
    """The pool's check refused an address the host name resolved to."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: sends requests, parses one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._head: asyncio.Future[tuple[int, Headers]] | None = None
        self._no_body = False
        # Body framing of the response being read: a length, chunked, or until close.
        self._remaining = 0
        self._chunked = False
        self._until_close = False
        self._chunk_state = "size"  # size, data, data-end, trailer
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._body_done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._drain: asyncio.Future[None] | None = None
        self.reusable = True

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._head is not None and not self._head.done():
            self._head.set_exception(UpstreamError("the server closed the connection before answering"))
        elif self._until_close and not self._body_done:
            self._body_done = True
        elif self._head is not None and not self._body_done:
            self._error = UpstreamError("the server closed the connection in the middle of the body")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamError("the connection was closed while sending"))

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._head is not None and not self._head.done():
            self._buffer += data
            self._parse_head()
        elif self._head is not None and not self._body_done:
            self._feed_body(bytes(data))
        else:
            self.reusable = False  # bytes nobody asked for: do not trust this connection again

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost does the rest

    # -- one exchange -------------------------------------------------------------------------

    def start(self, head_only: bool) -> asyncio.Future[tuple[int, Headers]]:
        self._head = asyncio.get_running_loop().create_future()
        self._no_body = head_only
        self._buffer.clear()
        self._body.clear()
        self._buffered = 0
        self._body_done = False
        self._error = None
        self._remaining = 0
        self._chunked = self._until_close = False
        self._chunk_state = "size"
        return self._head

    async def drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            await self._drain

    def _parse_head(self) -> None:
        assert self._head is not None
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._fail_head("the response head is too large")
                return
            lines = bytes(self._buffer[:end]).split(b"\r\n")
            rest = bytes(self._buffer[end + 4 :])
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                self._fail_head(f"not an HTTP/1.x response: {lines[0][:80]!r}")
                return
            status = int(parts[1])
            headers: Headers = []
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                if not colon:
                    self._fail_head(f"a malformed header line: {line[:80]!r}")
                    return
                headers.append((name.strip().lower(), value.strip()))
            if 100 <= status < 200 and status != 101:
                del self._buffer[: end + 4]  # 100 Continue and the like: the answer follows
                continue
            self._buffer.clear()
            self._frame(parts[0], status, headers)
            if self._chunked:  # the body is de-chunked: a length beside it would be a lie
                headers = [(name, value) for name, value in headers if name != b"content-length"]
            self._head.set_result((status, headers))
            if rest:
                self._feed_body(rest)
            elif self._body_done:
                self._wake()
            return

    def _fail_head(self, message: str) -> None:
        assert self._head is not None
        self.reusable = False
        self._head.set_exception(UpstreamError(message))
        if self.transport is not None:
            self.transport.close()

    def _frame(self, version: bytes, status: int, headers: Headers) -> None:
        connection = b""
        length: int | None = None
        for name, value in headers:
            if name == b"transfer-encoding" and value.lower().endswith(b"chunked"):
                self._chunked = True
            elif name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"connection":
                connection = value.lower()
        if b"close" in connection or (version == b"HTTP/1.0" and b"keep-alive" not in connection):
            self.reusable = False
        if self._no_body or status in _NO_BODY_STATUS or status < 200:
            self._chunked = False
            self._body_done = True
        elif self._chunked:
            pass
        elif length is not None:
            self._remaining = length
            self._body_done = length == 0
        else:
            self._until_close = True
            self.reusable = False

    def _feed_body(self, data: bytes) -> None:
        if self._chunked:
            self._buffer += data
            self._parse_chunks()
        elif self._until_close:
            self._push(data)
        else:
            if len(data) > self._remaining:
                self.reusable = False  # more than announced: drop the excess and the connection
                data = data[: self._remaining]
            self._remaining -= len(data)
            if self._remaining == 0:
                self._body_done = True
            self._push(data)
        if self._body_done:
            self._wake()

    def _parse_chunks(self) -> None:
        buffer = self._buffer
        while buffer:
            if self._chunk_state == "size":
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
                try:
                    if not size_text or len(size_text) > 16 or size_text.strip(_HEX):
                        raise ValueError  # no sign, no 0x, no underscore: hex digits only
                    self._remaining = int(size_text, 16)
                except ValueError:
                    self._error = UpstreamError(f"a malformed chunk size: {size_text[:20]!r}")
                    self._body_done = True
                    self.reusable = False
                    return
                del buffer[: end + 2]
                self._chunk_state = "data" if self._remaining else "trailer"
            elif self._chunk_state == "data":
                piece = bytes(buffer[: self._remaining])
                del buffer[: len(piece)]
                self._remaining -= len(piece)
                self._push(piece)
                if self._remaining == 0:
                    self._chunk_state = "data-end"
            elif self._chunk_state == "data-end":
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    self._error = UpstreamError("a chunk is not followed by CRLF")
                    self._body_done = True
                    self.reusable = False
                    return
                del buffer[:2]
                self._chunk_state = "size"
            else:  # trailers, up to an empty line
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                del buffer[: end + 2]
                if end == 0:
                    self._body_done = True
                    if buffer:
                        self.reusable = False
                    return

    def _push(self, data: bytes) -> None:
        if data:
            self._body.append(data)
            self._buffered += len(data)
            if self._buffered > _HIGH_WATER and not self._paused_reading and self.transport is not None:
                self._paused_reading = True
                self.transport.pause_reading()
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> tuple[bytes, bool]:
        """What has arrived of the body (waiting for something), and whether the body is done."""
        while not self._body and not self._body_done and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        if self._error is not None and not self._body:
            raise self._error
        data = b"".join(self._body) if len(self._body) > 1 else (self._body[0] if self._body else b"")
        self._body.clear()
        self._buffered = 0
        if self._paused_reading and self.transport is not None and not self.closed:
            self._paused_reading = False
            self.transport.resume_reading()
        return data, self._body_done and self._error is None

    @property
    def finished(self) -> bool:
        return self._body_done and not self._body and self._error is None


class Response:
    """An answer whose head arrived; its body is read with `next_chunk()`."""

    __slots__ = ("_connection", "_done", "_pool", "headers", "status")

    def __init__(self, pool: Pool, connection: _Connection, status: int, headers: Headers) -> None:
        self._pool = pool
        self._connection = connection
        self.status = status
        self.headers = headers
        self._done = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def next_chunk(self) -> tuple[bytes, bool]:
        """Whatever has arrived (an event is passed on at once), and whether it is the last."""
        data, last = await self._connection.read()
        if last:
            self.release()
        return data, last

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            data, last = await self.next_chunk()
            if data:
                yield data
            if last:
                return

    def release(self) -> None:
        """Give the connection back if the body was read whole; otherwise close it."""
        if not self._done:
            self._done = True
            self._pool.give_back(self._connection, reuse=self._connection.finished)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._pool.give_back(self._connection, reuse=False)


class Pool:
    """Keep-alive connections to one origin (scheme, host, port), at most `limit` at once."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        check: Callable[[str, str], None] | None,
        connect_timeout: float,
        limit: int,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = (
            ssl_context
            if ssl_context is not None
            else (ssl.create_default_context() if scheme == "https" else None)
        )
        self._check = check
        self._connect_timeout = connect_timeout
        self._idle: collections.deque[_Connection] = collections.deque()
        self._busy: set[_Connection] = set()
        self._slots = asyncio.Semaphore(limit)
        default_port = 443 if scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        self.host_header = (shown if port == default_port else f"{shown}:{port}").encode("idna")
        self.closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        literal = _ip_literal(self.host)
        if literal is not None:
            addresses = [(literal, self.port)]
        else:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            addresses = [(str(info[4][0]), int(info[4][1])) for info in infos]
        if self._check is not None:
            for address, _ in addresses:
                self._check(self.host, address)  # raises Refused
        last: BaseException | None = None
        for address, port in dict.fromkeys(addresses):
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(
                        _Connection,
                        address,
                        port,
                        ssl=self._tls,
                        server_hostname=self.host if self._tls is not None else None,
                    ),
                    self._connect_timeout,
                )
            except asyncio.TimeoutError:
                last = ConnectTimeout(f"could not connect within {self._connect_timeout:g}s")
                continue
            except OSError as exc:
                last = exc
                continue
            return protocol
        assert last is not None
        raise last

    async def request(
        self,
        verb: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> Response:
        """Send one request; the response once its head arrived."""
        if self.closed:
            raise UpstreamError("the connection pool is closed")
        head = _request_head(verb, target, self.host_header, headers, body)
        await self._slots.acquire()
        try:
            for attempt in (0, 1):
                connection, reused = self._take() if attempt == 0 else (None, False)
                if connection is None:
                    connection = await self._connect()
                self._busy.add(connection)
                try:
                    return await self._exchange(connection, verb, head, body)
                except UpstreamError as exc:
                    self._discard(connection)
                    # A kept-alive connection the server had just closed: once more on a new
                    # one, when nothing of the body is lost by it and the request was not
                    # sent, or may be sent twice (an idempotent method), as Go's client does.
                    again = isinstance(exc, _NotSent) or verb in _IDEMPOTENT
                    if not (reused and attempt == 0 and again and not isinstance(body, AsyncIterator)):
                        raise exc
                except BaseException:
                    self._discard(connection)
                    raise
            raise AssertionError("unreachable")
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self, connection: _Connection, verb: str, head: bytes, body: bytes | AsyncIterator[bytes] | None
    ) -> Response:
        transport = connection.transport
        if transport is None or connection.closed or transport.is_closing():
            raise _NotSent("the server closed the connection before answering")
        answer = connection.start(head_only=verb == "HEAD")
        try:
            if body is None or isinstance(body, bytes):
                transport.write(head + body if body else head)
            else:
                transport.write(head)
                chunked = b"transfer-encoding: chunked\r\n" in head
                async for chunk in body:
                    if not chunk:
                        continue
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await connection.drain()
                    if connection.closed:
                        break
                else:
                    if chunked:
                        transport.write(b"0\r\n\r\n")
        except BaseException:
            # The answer is not awaited: its failure (the connection is dropped) is nobody's.
            if answer.done():
                if not answer.cancelled():
                    answer.exception()
            else:
                answer.cancel()
            raise
        status, headers = await answer
        return Response(self, connection, status, headers)

    def _take(self) -> tuple[_Connection | None, bool]:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and connection.reusable:
                return connection, True
            _close(connection)
        return None, False

    def _discard(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        _close(connection)

    def give_back(self, connection: _Connection, *, reuse: bool) -> None:
        self._busy.discard(connection)
        self._slots.release()
        if reuse and connection.reusable and not connection.closed and not self.closed:
            self._idle.append(connection)
        else:
            _close(connection)

    def close(self) -> None:
        self.closed = True
        for connection in [*self._idle, *self._busy]:
            _close(connection)
        self._idle.clear()
        self._busy.clear()


def _close(connection: _Connection) -> None:
    connection.reusable = False
    if connection.transport is not None and not connection.transport.is_closing():
        connection.transport.close()


def _ip_literal(host: str) -> str | None:
    import ipaddress

    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _request_head(
    verb: str,
    target: str,
    host: bytes,
    headers: Sequence[tuple[str, str]],
    body: bytes | AsyncIterator[bytes] | None,
) -> bytes:
    lines = [f"{verb} {target} HTTP/1.1\r\n".encode("latin-1"), b"host: ", host, b"\r\n"]
    has_length = False
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"the header {name!r} has a forbidden character")
        if name == "content-length":
            has_length = True
        lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
    if isinstance(body, bytes) and not has_length:
        lines.append(b"content-length: %d\r\n" % len(body))
    elif body is not None and not isinstance(body, bytes) and not has_length:
        lines.append(b"transfer-encoding: chunked\r\n")
    elif body is None and verb in ("POST", "PUT", "PATCH") and not has_length:
        lines.append(b"content-length: 0\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
