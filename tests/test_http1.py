"""The proxy's HTTP/1.1 client against a raw server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest

from fastapi_dapr._http1 import Pool, UpstreamError


class DroppingServer:
    """Answers the first request of each connection; drops a connection's second request
    unanswered, as a server closing an idle keep-alive connection at the wrong moment."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.requests.append(head.split(b" ", 1)[0])
                if served == 1:
                    writer.close()  # the request was read, and dies unanswered
                    return
                served += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def dropping() -> AsyncIterator[tuple[DroppingServer, int]]:
    server = DroppingServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server, port
        listener.close()


def pool(port: int) -> Pool:
    return Pool("http", "127.0.0.1", port, ssl_context=None, check=None, connect_timeout=5, limit=10)


async def read(pool: Pool, verb: str, body: bytes | None = None) -> bytes:
    response = await pool.request(verb, "/", [], body)
    return b"".join([chunk async for chunk in response.chunks()])


async def test_an_idempotent_request_is_sent_again_on_a_new_connection(
    dropping: tuple[DroppingServer, int],
) -> None:
    server, port = dropping
    client = pool(port)
    assert await read(client, "GET") == b"ok"
    assert await read(client, "GET") == b"ok"  # dropped on the kept-alive connection, then retried
    assert server.requests == [b"GET", b"GET", b"GET"]
    client.close()


async def test_a_post_that_may_have_been_processed_is_not_sent_twice(
    dropping: tuple[DroppingServer, int],
) -> None:
    server, port = dropping
    client = pool(port)
    assert await read(client, "POST", b"x") == b"ok"
    with pytest.raises(UpstreamError, match="closed the connection before answering"):
        await read(client, "POST", b"y")
    assert server.requests == [b"POST", b"POST"]  # the second one exactly once
    client.close()


async def answer_with(raw: bytes) -> tuple[Pool, asyncio.AbstractServer]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    return pool(listener.sockets[0].getsockname()[1]), listener


@pytest.mark.parametrize(
    "chunked",
    [
        b"-1\r\nabc\r\n0\r\n\r\n",  # a negative size: once looped forever on the event loop
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabcXY0\r\n\r\n",  # no CRLF after the data
    ],
)
async def test_malformed_chunked_bodies_fail_instead_of_hanging(chunked: bytes) -> None:
    client, listener = await answer_with(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked)
    async with listener:
        with pytest.raises(UpstreamError):
            await asyncio.wait_for(read(client, "GET"), 5)
        client.close()


async def test_a_length_beside_chunked_framing_is_not_passed_on() -> None:
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    client, listener = await answer_with(raw)
    async with listener:
        response = await client.request("GET", "/", [], None)
        assert response.header(b"content-length") is None
        assert b"".join([chunk async for chunk in response.chunks()]) == b"hello"
        client.close()


async def test_a_body_that_fails_while_sent_leaves_no_answer_unretrieved() -> None:
    # The caller's body ends in an error (it went away, or passed the size limit): the
    # request fails with it, and the answer nobody awaits must not log "Future exception
    # was never retrieved" once the connection is dropped.
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client drops the connection
        writer.close()
        closed.set()

    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        async with listener:
            client = pool(listener.sockets[0].getsockname()[1])

            async def body() -> AsyncIterator[bytes]:
                yield b"part"
                raise RuntimeError("the caller went away")

            with pytest.raises(RuntimeError, match="the caller went away"):
                await client.request("POST", "/", [], body())
            await closed.wait()  # the client's side of the connection is gone by then
            client.close()
            gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []
