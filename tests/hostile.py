"""Upstreams that misbehave on purpose: raw asyncio servers on loopback.

`RawUpstream` reads each request with h11 (a parser independent of the client's
llhttp: what it reads is what a real server would) and answers with whatever the
test's handler writes. It records every request it parsed, with its body, and
every connection opened and closed, so a test can tell a smuggled second request,
a reused connection or one left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import h11


@dataclasses.dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # which connection it came on (0, 1, ...)
    complete: bool  # the whole body arrived

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class Exchange:
    """What a handler gets: the request's head, the connection's writer, and the rest."""

    def __init__(
        self,
        upstream: RawUpstream,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.upstream = upstream
        self.request = request
        self.reader = reader
        self.writer = writer
        self.leftover = b""  # what the server had read past the head (`read_body=False`)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_client_closes(self) -> None:
        """Read (and drop) whatever comes until the client closes the connection."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


Handler = Callable[[Exchange], Awaitable[None]]


async def answer_ok(exchange: Exchange) -> None:
    body = b"" if exchange.request.method == "HEAD" else b"ok"
    await exchange.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n" + body)


def answer_with(raw: bytes, *, close: bool = False) -> Handler:
    """Write `raw`; then close the connection (`close`), or read the next request."""

    async def handler(exchange: Exchange) -> None:
        await exchange.write(raw)
        if close:
            exchange.writer.close()

    return handler


class RawUpstream:
    """A loopback server answering each request with `handler`, request by request.

    With `read_body=False` the handler is called as soon as the head arrived (to
    answer early); otherwise once the whole request is read."""

    def __init__(self, handler: Handler = answer_ok, *, read_body: bool = True) -> None:
        self.handler = handler
        self.read_body = read_body
        self.requests: list[Request] = []
        self.opened = 0
        self.closed = 0
        self.changed = asyncio.Condition()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            await self.changed.wait_for(predicate)

    async def _note(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        number = self.opened
        self.opened += 1
        await self._note()
        parser = h11.Connection(h11.SERVER)
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        return
                    parser.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = Request(
                        event.method.decode(),
                        event.target.decode("latin-1"),
                        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
                        b"",
                        number,
                        False,
                    )
                    self.requests.append(request)
                    await self._note()
                    if not self.read_body:
                        exchange = Exchange(self, request, reader, writer)
                        exchange.leftover = bytes(parser.trailing_data[0])  # read past the head
                        await self.handler(exchange)
                        return  # an early answer: the rest of the request is never read
                elif isinstance(event, h11.Data):
                    request.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    request.complete = True
                    await self._note()
                    await self.handler(Exchange(self, request, reader, writer))
                    if parser.our_state is h11.MUST_CLOSE or parser.their_state is h11.MUST_CLOSE:
                        return
                    # The handler wrote raw bytes h11 did not see: tell it the answer is over.
                    parser = _reset(parser)
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (h11.RemoteProtocolError, ConnectionError):
            return  # what follows the first request is not HTTP (a smuggled tail, garbage)
        except asyncio.CancelledError:
            return  # the test is over (ends the task normally: asyncio's stream callback
            # of Python 3.11 logs a cancelled connection task as an error)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.closed += 1
            await self._note()

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()


def _reset(parser: h11.Connection) -> h11.Connection:
    """A parser for the connection's next request, keeping the bytes already received."""
    fresh = h11.Connection(h11.SERVER)
    data, _ = parser.trailing_data
    if data:
        fresh.receive_data(bytes(data))
    return fresh


@contextlib.asynccontextmanager
async def raw_upstream(handler: Handler = answer_ok, *, read_body: bool = True) -> AsyncIterator[RawUpstream]:
    async with RawUpstream(handler, read_body=read_body) as upstream:
        yield upstream
