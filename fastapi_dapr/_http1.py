"""The invocation proxy's HTTP/1.1 client: keep-alive pools, streaming both ways, strict framing.

Why not a general client: `bench/invoke_proxy.py` measured the proxy on httpx
at about 0.05 of the upstream's direct throughput, and on aiohttp's client at
about 0.6, most of its extra CPU spent in the client's per-request machinery.
The proxy needs little of that machinery (no cookies, no automatic redirects,
no decompression, no proxies from the environment), so this module runs the
exchange itself on asyncio: one `write` per request, and flow control both ways.

Answers are parsed by llhttp (httptools' `HttpResponseParser`, the parser
uvicorn serves with), strict, with none of its lenient flags; nothing of an
answer is parsed by hand here. What this module adds is what llhttp leaves to
its user:

- limits (`Limits`): llhttp buffers nothing, but httptools gathers header
  names and values, and an endless chunk-size line or trailer would hold an
  exchange: the head, each line and the trailers are bounded;
- what Go's client (daprd's) refuses beyond llhttp: a `Transfer-Encoding`
  other than one `chunked`, a status under 100, another version than 1.0 or
  1.1, more than 5 informational answers; and `101` when no upgrade was asked;
- a fresh parser for each exchange (llhttp cannot be told that an answer to
  `HEAD` has no body), interim 1xx answers skipped.

A request's head and framing are made in one place, `request_head`, from the
body it is given (a length for bytes, the declared length of a counted stream,
chunked otherwise), never from header bytes; its method, target and headers are
checked there. The answer is read while a streamed body is still being sent: a
final answer that comes early stops the upload.

Addresses are resolved here, checked by the pool's `check` before any
connection is made, and connected to as resolved (a name cannot be rebound
between the check and the connection). TLS uses the pool's context with the
host name for SNI and verification.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Callable, Sequence

import httptools

from ._headers import BAD_VALUE_RE, CLIENT_SET, TOKEN, TOKEN_RE
from ._timeouts import within

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

Headers = list[tuple[bytes, bytes]]
_HIGH_WATER = 64 * 1024  # bytes buffered from the upstream before reading pauses
_SLICE = 4 * 1024  # head and chunked bytes are fed in slices of this size: the line limit's grain
_MAX_INTERIM = 5  # informational answers before the final one (Go's max1xxResponses)
_STOP_UPLOAD = 1.0  # seconds an upload stopped by an early answer is given to end
_READ_AHEAD = 256 * 1024  # bytes of a body read ahead while the upstream reads none
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # Go's isReplayable
_NAMES_RE = re.compile(rf"{TOKEN}(?:\n{TOKEN})*")  # names joined by "\n"
_TARGET_RE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no space, no CTL, nothing to re-encode


@dataclasses.dataclass(frozen=True)
class Limits:
    """The largest parts of an exchange the client accepts, in bytes.

    - `line`: the request line, a status line, a header line, a chunk-size line
      with its extensions, a trailer line (checked per 4 KiB read: a line
      between `line` and `line` + 4 KiB may pass, a longer one never does);
    - `head`: a request's or an answer's head, and all of an answer's trailers.
    """

    line: int = 16 * 1024
    head: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.line < 1024 or self.head < self.line:
            raise ValueError("limits: line must be at least 1 KiB, head at least line")


class UpstreamError(OSError):
    """The upstream broke the exchange (closed early, sent something that is not HTTP)."""


class ConnectTimeout(UpstreamError):
    """No connection could be made within the connect timeout (nothing was sent)."""


class MalformedAnswer(UpstreamError):
    """The upstream's answer is not valid HTTP/1.1, or passes a limit: its connection is closed."""


class _NotSent(UpstreamError):
    """The connection was found closed before anything of the request was written."""


class RequestError(ValueError):
    """A request that cannot be sent as asked: a method, target or header that is not valid
    HTTP/1.1 (CR, LF or NUL in a header), a head over the limits, or a streamed body that
    is not of the length it declared."""


class Refused(Exception):
    """The pool's check refused an address the host name resolved to."""


class _Malformed(Exception):
    """Raised in a parser callback: the answer breaks a rule llhttp leaves to us."""


class _Unsolicited(Exception):
    """Raised in a parser callback: bytes after the answer's end."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: sends requests, and reads one answer at a time through llhttp.

    The parser calls the `on_*` methods; an exchange goes through the states
    idle, head (waiting for the final answer's head), body, done.
    """

    def __init__(self, limits: Limits, where: str) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.keeps_alive = True  # what the last answer's head said
        self._limits = limits
        self._where = where
        self._parser: httptools.HttpResponseParser | None = None
        self._spare: httptools.HttpResponseParser | None = None  # after a whole answer
        self._state = "idle"
        self._head: asyncio.Future[tuple[int, Headers]] | None = None
        self._head_only = False
        self._headers: Headers = []
        self._head_size = 0  # of the current head, from what llhttp reported of it
        self._fed = 0  # bytes fed while the head is incomplete
        self._interim = 0
        self._chunked = self._has_length = self._until_close = False
        self._trailers = 0
        self._run = 0  # framing bytes since the parser last reported progress
        self._progress = False
        self._body_fed = 0
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._body_done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._state == "head":
            self._end(UpstreamError("the server closed the connection before answering"))
        elif self._state == "body":
            if self._until_close and exc is None:
                self._body_done = True  # an answer without a length ends with its connection
                self._end(None)
            elif exc is not None:
                self._end(UpstreamError(f"the connection broke in the middle of the body ({exc})"))
            else:
                self._end(UpstreamError("the server closed the connection in the middle of the body"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)  # `drain()` raises: a bytes body has nobody awaiting it

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self._unusable()  # bytes nobody asked for: do not trust this connection again
            return
        try:
            if self._state == "body" and not self._chunked:
                parser.feed_data(data)  # a counted or until-close body: all of it is body
            elif len(data) <= _SLICE:
                self._feed(parser, data)
            else:
                view = memoryview(data)
                for start in range(0, len(data), _SLICE):
                    if self._parser is not parser:  # the answer ended: the rest is nobody's
                        self._unusable()
                        return
                    if self._state == "body" and not self._chunked:
                        parser.feed_data(view[start:])
                        return
                    self._feed(parser, view[start : start + _SLICE])
        except _Malformed as exc:
            self._malformed(str(exc))
        except httptools.HttpParserUpgrade:
            self._malformed("101 Switching Protocols, and no upgrade was asked for")
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Unsolicited) or self._state == "done":
                self._unusable()  # the answer was whole; what follows it is not trusted
            elif isinstance(cause, _Malformed):
                self._malformed(str(cause))
            else:
                self._malformed(str(exc) or type(exc).__name__)

    def _feed(self, parser: httptools.HttpResponseParser, data: bytes | memoryview) -> None:
        """Feed a slice of at most `_SLICE` bytes, and check the limits llhttp does not keep.

        Framing bytes (neither head nor body) since the parser last reported progress
        are counted per slice; a slice with progress restarts the count at its own
        framing bytes, so the count is at most `_SLICE` above the true one."""
        self._progress = False
        self._body_fed = 0
        parser.feed_data(data)
        if self._state == "head":
            self._fed += len(data)
            if self._fed > self._limits.head:
                raise _Malformed(self._too_large("head"))
        elif self._state == "body":
            framing = len(data) - self._body_fed
            self._run = framing if self._progress else self._run + framing
            if self._run > self._limits.line + _SLICE:
                raise _Malformed(f"a chunk-size line or a trailer is longer than {self._limits.line} bytes")

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost does the rest

    # -- llhttp's callbacks -------------------------------------------------------------------

    # No `on_message_begin`: a callback less for each answer. What begins after the
    # answer is caught by the first callback that sees the state.

    def _new_head(self) -> None:
        self._headers = []
        self._head_size = 15  # "HTTP/1.1 200 " and CRLF
        self._has_length = self._chunked = False

    def on_status(self, reason: bytes) -> None:
        if self._state != "head":
            raise _Unsolicited
        self._head_size += len(reason)
        if self._head_size > self._limits.line:
            raise _Malformed(f"the status line is longer than {self._limits.line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The hot path: checked here only for size (httptools gathered the line whole);
        # the rest once, in `on_headers_complete`.
        if self._state != "head":
            self._trailer(name, value)
            return
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_size > self._limits.head:
            raise _Malformed(self._too_large("head"))
        self._headers.append((name, value))

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer: counted and bounded, not passed on."""
        if self._state != "body":
            raise _Unsolicited
        size = len(name) + len(value)
        if size + 2 > self._limits.line:
            raise _Malformed(f"a trailer line is longer than {self._limits.line} bytes")
        self._progress = True
        self._trailers += size + 4
        if self._trailers > self._limits.head:
            raise _Malformed(f"the trailers are larger than {self._limits.head} bytes")

    def on_headers_complete(self) -> None:
        if self._state != "head":
            raise _Unsolicited
        parser = self._parser
        assert parser is not None
        assert self._head is not None
        self._progress = True
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Malformed(f"HTTP/{version} is not HTTP/1.1")
        status = parser.get_status_code()
        if status < 100 or status > 599:
            raise _Malformed(f"{status:03d} is not a status code (HTTP's are 100 to 599)")
        if status == 101:
            raise _Malformed("101 Switching Protocols, and no upgrade was asked for")
        if status < 200:
            self._interim += 1  # 100 Continue, 103 Early Hints: the answer follows
            if self._interim > _MAX_INTERIM:
                raise _Malformed(f"more than {_MAX_INTERIM} informational (1xx) answers")
            self._new_head()
            return
        self._read_headers()
        self._state = "body"
        self._until_close = not self._chunked and not self._has_length and status not in (204, 304)
        self.keeps_alive = parser.should_keep_alive() and not self._until_close
        if not self.keeps_alive:
            self.reusable = False
        if not self._head.done():
            self._head.set_result((status, self._headers))
        if self._head_only:
            self._body_done = True
            self._end(None)  # llhttp would wait for the body a Content-Length announces

    def _read_headers(self) -> None:
        """The final head's headers: names in lower case, values without trailing whitespace
        (llhttp keeps it), each line within the limit, the framing as Go's client allows it."""
        line = self._limits.line - 4
        headers = []
        for raw_name, raw_value in self._headers:
            name = raw_name.lower()
            value = raw_value.rstrip(b" \t")
            if len(name) + len(value) > line:
                raise _Malformed(f"a header line is longer than {self._limits.line} bytes")
            if name == b"content-length":
                self._has_length = True
            elif name == b"transfer-encoding":
                # Go's client knows no other coding, and refuses a list or a second header.
                if self._chunked or value.lower() != b"chunked":
                    raise _Malformed(f"unsupported Transfer-Encoding {value[:40]!r}")
                self._chunked = True
            headers.append((name, value))
        self._headers = headers

    def on_body(self, body: bytes) -> None:
        if self._state != "body":
            raise _Unsolicited
        self._body_fed += len(body)
        self._progress = True
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._progress = True
        if self._state == "head":
            return  # the end of an interim answer
        if self._state != "body":
            if self._head_only:
                return  # the end llhttp sees of an answer to HEAD that had already ended
            raise _Unsolicited
        self._spare = self._parser
        self._body_done = True
        self._end(None)

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    # -- one exchange -------------------------------------------------------------------------

    def start(self, head_only: bool) -> asyncio.Future[tuple[int, Headers]]:
        self._head = asyncio.get_running_loop().create_future()
        # llhttp is ready for the next answer after a whole one; not after an answer to
        # HEAD (it waits for the body a length announced) or an error.
        self._parser = self._spare or httptools.HttpResponseParser(self)
        self._spare = None
        self._state = "head"
        self._head_only = head_only
        self._new_head()
        self._fed = self._interim = self._trailers = self._run = 0
        self._body.clear()
        self._buffered = 0
        self._body_done = False
        self._error = None
        self._until_close = False
        return self._head

    def _end(self, error: BaseException | None) -> None:
        """The exchange is over: whole, or failed with `error`."""
        self._state = "done"
        self._parser = None
        if error is not None:
            self.reusable = False
            if self._head is not None and not self._head.done():
                self._head.set_exception(error)
            else:
                self._error = error
        self._wake()

    def _malformed(self, reason: str) -> None:
        logger.warning(
            "invocation: the answer of %s is not valid HTTP/1.1: %s; its connection is closed",
            self._where,
            reason,
        )
        self._spare = None
        self._end(MalformedAnswer(f"the answer is not valid HTTP/1.1: {reason}"))
        self._close_transport()

    def _unusable(self) -> None:
        self.reusable = False
        self._parser = self._spare = None
        self._close_transport()

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _too_large(self, what: str) -> str:
        return f"the answer's {what} is larger than {self._limits.head} bytes"

    @property
    def write_paused(self) -> bool:
        return self._drain is not None and not self._drain.done()

    def drained(self) -> asyncio.Future[None]:
        """Done once the transport takes writes again (or the connection is lost)."""
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()
            self._drain.set_result(None)
        return self._drain

    async def drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            await self._drain
        if self.closed:
            raise UpstreamError("the connection was closed while sending")

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

    __slots__ = ("_connection", "_done", "_pool", "_upload", "headers", "status")

    def __init__(
        self,
        pool: Pool,
        connection: _Connection,
        status: int,
        headers: Headers,
        upload: asyncio.Future[None] | None = None,
    ) -> None:
        self._pool = pool
        self._connection = connection
        self.status = status
        self.headers = headers
        self._upload = upload  # still sending the body (a full-duplex target)
        self._done = False

    @property
    def uploading(self) -> bool:
        """Whether the request's body is still being sent beside this answer."""
        return self._upload is not None and not self._upload.done()

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
            self._stop_upload()
            self._pool.give_back(self._connection, reuse=self._connection.finished)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._stop_upload()
            self._pool.give_back(self._connection, reuse=False)

    def _stop_upload(self) -> None:
        if self._upload is not None and not self._upload.done():
            self._upload.cancel()  # the answer is over: what is left of the body is not wanted


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


def _ip_literal(host: str) -> str | None:
    import ipaddress

    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


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
        if not _NAMES_RE.fullmatch(names) or names.count("\n") != len(headers) - 1:
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
