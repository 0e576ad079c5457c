"""Keep-alive connections to one origin, and the requests sent on them.

A request's head and framing are made in one place, `request_head`, from the
body it is given (a length for bytes, the declared length of a counted stream,
chunked otherwise), never from header bytes; its method, target and headers are
checked there. The answer (`http1`) is read while a streamed body is still
being sent: an early answer that does not want the body (300 or more, or a
close) stops the upload, a success lets it go on beside the answer.

Addresses are resolved here, checked by the pool's `check` before any
connection is made, and connected to as resolved (a name cannot be rebound
between the check and the connection). TLS uses the pool's context with the
host name for SNI and verification.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Callable, Sequence

from .._headers import BAD_VALUE_RE, CLIENT_SET, NAMES_RE, TOKEN_RE
from .addresses import ip_literal
from .http1 import (
    ConnectTimeout,
    Limits,
    MalformedAnswer,
    RequestError,
    Response,
    UpstreamError,
    _Connection,
    _NotSent,
)
from .timeouts import within

__all__: list[str] = []


class Refused(Exception):
    """The pool's check refused an address the host name resolved to."""


_STOP_UPLOAD = 1.0  # seconds an upload stopped by an early answer is given to end
_READ_AHEAD = 256 * 1024  # bytes of a body read ahead while the upstream reads none
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # Go's isReplayable
_TARGET_RE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no space, no CTL, nothing to re-encode


Body = bytes | AsyncIterator[bytes] | None


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
        limits: Limits | None = None,
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
        self.limits = limits or Limits()
        default_port = 443 if scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        self.host_header = (shown if port == default_port else f"{shown}:{port}").encode("idna").decode()
        if not _TARGET_RE.fullmatch(self.host_header):
            raise RequestError(f"the host {host[:80]!r} cannot be sent in a Host header")
        self._where = f"{shown}:{port}"
        self.closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        literal = ip_literal(self.host, brackets=True)
        if literal is not None:
            addresses = [(str(literal), self.port)]
        else:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            addresses = [(str(info[4][0]), int(info[4][1])) for info in infos]
        if self._check is not None:
            for address, _ in addresses:
                self._check(self.host, address)  # raises Refused
        last: BaseException | None = None
        for address, port in dict.fromkeys(addresses):
            try:
                _, protocol = await within(
                    loop.create_connection(
                        lambda: _Connection(self.limits, self._where),
                        address,
                        port,
                        ssl=self._tls,
                        server_hostname=self.host if self._tls is not None else None,
                    ),
                    self._connect_timeout,
                    lambda made: made[0].close(),  # a connection made too late for anyone
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
        body: Body,
        *,
        length: int | None = None,
    ) -> Response:
        """Send one request; the response once its head arrived.

        `headers` must not hold framing headers (`_headers.CLIENT_SET`): the body decides them.
        `length` is the length a streamed body declared (None: it is sent chunked);
        the stream is counted against it. Raises `RequestError` before anything is
        sent for a request that is not valid HTTP/1.1."""
        if self.closed:
            raise UpstreamError("the connection pool is closed")
        head = request_head(verb, target, self.host_header, headers, body, length, self.limits)
        await self._slots.acquire()
        try:
            for attempt in (0, 1):
                connection, reused = self._take() if attempt == 0 else (None, False)
                if connection is None:
                    connection = await self._connect()
                self._busy.add(connection)
                try:
                    return await self._exchange(connection, verb, head, body, length)
                except UpstreamError as exc:
                    self._discard(connection)
                    # A kept-alive connection the server had just closed: once more on a new
                    # one, when nothing of the body is lost by it and the request was not
                    # sent, or may be sent twice (an idempotent method), as Go's client does.
                    again = isinstance(exc, _NotSent) or (
                        verb in _IDEMPOTENT and not isinstance(exc, MalformedAnswer)
                    )
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
        self, connection: _Connection, verb: str, head: bytes, body: Body, length: int | None
    ) -> Response:
        transport = connection.transport
        if transport is None or connection.closed or transport.is_closing():
            raise _NotSent("the server closed the connection before answering")
        answer = connection.start(head_only=verb == "HEAD")
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
            status, headers = await answer
            if transport.get_write_buffer_size():
                connection.reusable = False  # answered before it read the whole request
            return Response(self, connection, status, headers)
        transport.write(head)
        upload = asyncio.ensure_future(_upload(connection, transport, body, length))
        upload.add_done_callback(_forget)
        try:
            await asyncio.wait((answer, upload), return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                upload.result()  # the caller's body failed (gone, too large, not its length)
                await answer  # sent whole: now the answer
        except BaseException:
            upload.cancel()
            _forget(answer)
            raise
        status, headers = answer.result()
        if upload.done():
            if upload.cancelled() or upload.exception() is not None:
                connection.reusable = False
            return Response(self, connection, status, headers)
        connection.reusable = False
        if status >= 300 or not connection.keeps_alive:
            # A final answer before the whole body was sent, saying the body is not wanted
            # (a 413, a close): the upload stops (RFC 9112, 9.5) and the answer is the
            # caller's. The upload is let go first: it may hold the caller's `receive`.
            upload.cancel()
            await asyncio.wait((upload,), timeout=_STOP_UPLOAD)
            return Response(self, connection, status, headers)
        # A success while the body is still being sent: a full-duplex target (it answers
        # as it reads). The upload goes on beside the answer, as Go's client does; a
        # failed upload breaks the exchange, and the answer's end stops the upload.
        upload.add_done_callback(lambda done: _upload_ended(connection, done))
        return Response(self, connection, status, headers, upload)

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


async def _upload(
    connection: _Connection, transport: asyncio.Transport, body: AsyncIterator[bytes], length: int | None
) -> None:
    """Send a streamed body: chunked, or counted against the length it declared.

    While the upstream reads nothing (the transport's buffer is full), the body's next
    chunks are read ahead, up to `_READ_AHEAD` bytes: the body's reader is what sees
    the caller leave, and a caller gone must not hold the exchange and its slot."""
    sent = 0
    ahead: collections.deque[bytes | None] = collections.deque()  # None: the end
    ahead_size = 0
    reading: asyncio.Future[bytes | None] | None = None
    try:
        while True:
            if ahead:
                chunk = ahead.popleft()
                ahead_size -= len(chunk or b"")
            elif reading is not None:
                chunk = await reading
                reading = None
            else:
                chunk = await _next(body)
            if chunk is None:
                break
            if not chunk:
                continue
            sent += len(chunk)
            if length is None:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            elif sent > length:
                raise RequestError(f"the body is longer than the {length} bytes it declared")
            else:
                transport.write(chunk)
            while connection.write_paused:
                ended = bool(ahead) and ahead[-1] is None
                if reading is None and not ended and ahead_size < _READ_AHEAD:
                    reading = asyncio.ensure_future(_next(body))
                drained = connection.drained()
                if reading is None:
                    await drained
                    break
                await asyncio.wait((reading, drained), return_when=asyncio.FIRST_COMPLETED)
                if reading.done():
                    more = reading.result()  # raises: the caller gone, the body too large
                    reading = None
                    ahead.append(more)
                    ahead_size += len(more or b"")
            if connection.closed:
                return  # the answer (or its absence) tells what happened
    finally:
        if reading is not None:
            reading.cancel()
    if length is None:
        transport.write(b"0\r\n\r\n")
    elif sent != length:
        raise RequestError(f"the body ended after {sent} of the {length} bytes it declared")


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


def _upload_ended(connection: _Connection, upload: asyncio.Future[None]) -> None:
    """An upload beside its answer ended: if it failed, the target must not take the cut
    body for a whole one, and the answer is broken with it."""
    if not upload.cancelled() and upload.exception() is not None:
        _close(connection)


def _forget(future: asyncio.Future[typing.Any]) -> None:
    """Retrieve a future's outcome nobody awaits (no "exception was never retrieved")."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


def _close(connection: _Connection) -> None:
    connection.reusable = False
    if connection.transport is not None and not connection.transport.is_closing():
        connection.transport.close()


def request_head(
    verb: str,
    target: str,
    host: str,
    headers: Sequence[tuple[str, str]],
    body: Body,
    length: int | None,
    limits: Limits,
) -> bytes:
    """A request's head, its framing decided by its body alone. Raises `RequestError`."""
    if not TOKEN_RE.fullmatch(verb):
        raise RequestError(f"{verb[:40]!r} is not an HTTP method")
    if not _TARGET_RE.fullmatch(target):
        raise RequestError(
            f"the request target {target[:80]!r} has a space, a control or a non-ASCII character"
        )
    if headers:
        names = "\n".join(name for name, _ in headers)
        if not NAMES_RE.fullmatch(names) or names.count("\n") != len(headers) - 1:
            bad = next(name for name, _ in headers if not TOKEN_RE.fullmatch(name))
            raise RequestError(f"the header name {bad[:40]!r} is not an HTTP token")
        if BAD_VALUE_RE.search("\t".join(value for _, value in headers)):
            bad = next(name for name, value in headers if BAD_VALUE_RE.search(value))
            raise RequestError(f"the header {bad!r} has CR, LF, NUL or another control character")
        framing = CLIENT_SET.intersection(names.lower().split("\n"))
        if framing:
            raise RequestError(f"framing headers are the client's to set: {sorted(framing)}")
        longest = max(len(name) + len(value) for name, value in headers) + 2
        if longest > limits.line:
            raise RequestError(f"a header line is longer than {limits.line} bytes")
    if len(verb) + len(target) + 11 > limits.line:
        raise RequestError(f"the request line is longer than {limits.line} bytes")
    parts = [verb, " ", target, " HTTP/1.1\r\nhost: ", host, "\r\n"]
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
    if isinstance(body, bytes):
        parts.append(f"content-length: {len(body)}\r\n")
    elif body is not None:
        parts.append(
            f"content-length: {length}\r\n" if length is not None else "transfer-encoding: chunked\r\n"
        )
    elif verb in ("POST", "PUT", "PATCH"):
        parts.append("content-length: 0\r\n")
    parts.append("\r\n")
    try:
        head = "".join(parts).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"a header has a character that is not Latin-1: {exc.object[exc.start : exc.end]!r}"
        ) from None
    if len(head) > limits.head:
        raise RequestError(f"the request head is larger than {limits.head} bytes")
    return head
