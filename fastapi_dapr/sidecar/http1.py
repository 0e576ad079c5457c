"""The invocation client's HTTP/1.1 connections: answers read through llhttp, strictly.

Why not a general client: `bench/invoke_proxy.py` measured the proxy on httpx
at about 0.05 of the upstream's direct throughput, and on aiohttp's client at
about 0.6, most of its extra CPU spent in the client's per-request machinery.
The proxy needs little of that machinery (no cookies, no automatic redirects,
no decompression, no proxies from the environment), so the client runs the
exchange itself on asyncio: this module reads answers, `pool` connects, sends
requests and keeps connections alive.

Answers are parsed by llhttp (httptools' `HttpResponseParser`, the parser
uvicorn serves with), strict, with none of its lenient flags; nothing of an
answer is parsed by hand here. What this module adds is what llhttp leaves to
its user:

- limits (`Limits`): llhttp buffers nothing, but httptools gathers header
  names and values, and an endless chunk-size line or trailer would hold an
  exchange: the head, each line and the trailers are bounded;
- what Go's client (daprd's) refuses beyond llhttp: a `Transfer-Encoding`
  other than one `chunked`, a status outside 100 to 599, another version than
  1.0 or 1.1, more than 5 informational answers; and `101` when no upgrade was
  asked for;
- interim 1xx answers skipped; a parser kept for the next exchange only after a
  whole answer (llhttp cannot be told that an answer to `HEAD` has no body).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import typing
from collections.abc import AsyncIterator

import httptools

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

Headers = list[tuple[bytes, bytes]]
_HIGH_WATER = 64 * 1024  # bytes buffered from the upstream before reading pauses
_SLICE = 4 * 1024  # head and chunked bytes are fed in slices of this size: the line limit's grain
_MAX_INTERIM = 5  # informational answers before the final one (Go's max1xxResponses)


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


class Lender(typing.Protocol):  # where a Response gives its connection back: a Pool, not imported
    def give_back(self, connection: _Connection, *, reuse: bool) -> None: ...


class Response:
    """An answer whose head arrived; its body is read with `next_chunk()`."""

    __slots__ = ("_connection", "_done", "_pool", "_upload", "headers", "status")

    def __init__(
        self,
        pool: Lender,
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
