"""The proxy's HTTP/1.1 client against upstreams that misbehave on purpose.

Every answer is parsed by llhttp; these tests hold the client to what it promises on
top: a malformed answer is `MalformedAnswer` and its connection is never used again,
every line and head is bounded, a streamed body is counted, an early answer stops an
upload, and a request's framing comes from its body alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from fastapi_dapr.sidecar.caller import ClientGone
from fastapi_dapr.sidecar.http1 import Limits, MalformedAnswer, RequestError, UpstreamError
from fastapi_dapr.sidecar.pool import Pool, request_head

from ..hostile import Exchange, RawUpstream, answer_with, raw_upstream


def pool(port: int, **options: object) -> Pool:
    settings: dict[str, object] = {"ssl_context": None, "check": None, "connect_timeout": 5, "limit": 10}
    settings.update(options)
    return Pool("http", "127.0.0.1", port, **settings)  # type: ignore[arg-type]


async def read(client: Pool, verb: str = "GET", body: bytes | None = None, target: str = "/") -> bytes:
    response = await client.request(verb, target, [], body)
    return b"".join([chunk async for chunk in response.chunks()])


# -- keep-alive and retries --------------------------------------------------------------------


def dropping_second_request() -> object:
    """Answers the first request of each connection; drops the second unanswered, as a
    server closing an idle keep-alive connection at the wrong moment."""

    async def handler(exchange: Exchange) -> None:
        same = [r for r in exchange.upstream.requests if r.connection == exchange.request.connection]
        if len(same) == 2:
            exchange.writer.close()  # read, and dies unanswered
            return
        await exchange.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    return handler


async def test_an_idempotent_request_is_sent_again_on_a_new_connection() -> None:
    async with RawUpstream(dropping_second_request()) as server:  # type: ignore[arg-type]
        client = pool(server.port)
        assert await read(client) == b"ok"
        assert await read(client) == b"ok"  # dropped on the kept-alive connection, then retried
        client.close()
    assert [(r.method, r.connection) for r in server.requests] == [("GET", 0), ("GET", 0), ("GET", 1)]


async def test_a_post_that_may_have_been_processed_is_not_sent_twice() -> None:
    async with RawUpstream(dropping_second_request()) as server:  # type: ignore[arg-type]
        client = pool(server.port)
        assert await read(client, "POST", b"x") == b"ok"
        with pytest.raises(UpstreamError, match="closed the connection before answering"):
            await read(client, "POST", b"y")
        client.close()
    assert [r.body for r in server.requests] == [b"x", b"y"]  # the second one exactly once


async def test_a_kept_alive_connection_is_reused_after_a_whole_answer() -> None:
    async with raw_upstream() as server:
        client = pool(server.port)
        for _ in range(3):
            assert await read(client) == b"ok"
        # HEAD: llhttp would wait for the body its Content-Length announces; none comes.
        head = await client.request("HEAD", "/", [], None)
        assert head.header(b"content-length") == b"2"
        assert await head.next_chunk() == (b"", True)
        assert await read(client) == b"ok"
        client.close()
    assert {r.connection for r in server.requests} == {0}


# -- malformed answers -------------------------------------------------------------------------

MALFORMED = {
    "conflicting lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk",
    "the same length twice": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
    "xchunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "chunked, gzip and a length": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n"
    b"content-length: 3\r\n\r\nabc",
    "a length beside chunked": b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "two transfer-encodings": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked"
    b"\r\n\r\n0\r\n\r\n",
    "a space before the colon": b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok",
    "an obs-fold line": b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
    "status 0042": b"HTTP/1.1 0042 OK\r\ncontent-length: 2\r\n\r\nok",
    "status 000": b"HTTP/1.1 000 OK\r\ncontent-length: 2\r\n\r\nok",
    "status 099": b"HTTP/1.1 099 OK\r\ncontent-length: 2\r\n\r\nok",
    "status 1000": b"HTTP/1.1 1000 OK\r\ncontent-length: 2\r\n\r\nok",
    "status 600": b"HTTP/1.1 600 Beyond\r\ncontent-length: 2\r\n\r\nok",  # uvicorn has no line for it
    "status 999": b"HTTP/1.1 999 Beyond\r\ncontent-length: 2\r\n\r\nok",
    "HTTP/1.banana": b"HTTP/1.banana 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "HTTP/2.0": b"HTTP/2.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "HTTP/0.9": b"HTTP/0.9 200 OK\r\ncontent-length: 2\r\n\r\nok",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
    "a bare CR in a value": b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\ncontent-length: 2\r\n\r\nok",
    "bare LF line ends": b"HTTP/1.1 200 OK\nx-a: ab\ncontent-length: 2\n\nok",
    "a control character in a value": b"HTTP/1.1 200 OK\r\nx-a: a\x01b\r\ncontent-length: 2\r\n\r\nok",
    "an empty header name": b"HTTP/1.1 200 OK\r\n: ab\r\ncontent-length: 2\r\n\r\nok",
    "a spaced header name": b"HTTP/1.1 200 OK\r\nx a: ab\r\ncontent-length: 2\r\n\r\nok",
    "101 unasked": b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    "101 with an upgrade": b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
    b"upgrade: h2c\r\n\r\nxyz",
    "six interim answers": b"HTTP/1.1 100 Continue\r\n\r\n" * 6
    + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    "a negative chunk size": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
    "a chunk size in 0x": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    "no CRLF after a chunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
    "a chunk size that overflows": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    b"ffffffffffffffffff\r\n",
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\n",
}


def keep_open_after(raw: bytes) -> object:
    """Write `raw` and keep the connection open: only the client can end it."""

    async def handler(exchange: Exchange) -> None:
        await exchange.write(raw)
        await exchange.until_client_closes()

    return handler


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_answer_is_refused_and_its_connection_closed(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with RawUpstream(keep_open_after(raw)) as server:  # type: ignore[arg-type]
        client = pool(server.port)
        with caplog.at_level(logging.WARNING, "fastapi_dapr"), pytest.raises(MalformedAnswer) as failure:
            await asyncio.wait_for(read(client), 5)
        assert str(failure.value).startswith("the answer is not valid HTTP/1.1: ")
        await asyncio.wait_for(server.wait_for(lambda: server.closed == 1), 5)  # closed by the client
        client.close()
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "is not valid HTTP/1.1" in warnings[0].getMessage()
    assert warnings[0].exc_info is None


async def test_interim_answers_are_skipped() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-final: yes\r\n\r\nok"
    )
    async with raw_upstream(answer_with(raw)) as server:
        client = pool(server.port)
        response = await client.request("GET", "/", [], None)
        assert (response.status, response.header(b"x-final"), response.header(b"link")) == (200, b"yes", None)
        assert await response.next_chunk() == (b"ok", True)
        assert await read(client) == b"ok"  # the same connection
        client.close()
    assert {r.connection for r in server.requests} == {0}


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",  # more than it announced
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nokEXTRA",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    ],
)
async def test_bytes_after_the_answer_are_not_trusted(raw: bytes) -> None:
    async with raw_upstream(answer_with(raw)) as server:
        client = pool(server.port)
        assert await read(client) == b"ok"  # the answer itself is whole
        assert await read(client) == b"ok"  # on a new connection
        client.close()
    assert [r.connection for r in server.requests] == [0, 1]


async def test_an_answer_cut_short_is_an_error_and_its_connection_closed() -> None:
    async with raw_upstream(
        answer_with(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", close=True)
    ) as server:
        client = pool(server.port)
        response = await client.request("GET", "/", [], None)
        with pytest.raises(UpstreamError, match="in the middle of the body"):
            async for _ in response.chunks():
                pass
        client.close()


async def test_an_answer_until_close_is_whole_at_the_close() -> None:
    async with raw_upstream(answer_with(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True)) as server:
        client = pool(server.port)
        assert await read(client) == b"until the end"
        client.close()


# -- limits ------------------------------------------------------------------------------------


def endless(start: bytes, filler: bytes) -> object:
    """Write `start`, then `filler` for ever (until the client closes the connection)."""

    async def handler(exchange: Exchange) -> None:
        block = filler * (65536 // len(filler))
        sent = 0
        try:
            await exchange.write(start)
            while sent < 256 << 20:  # a client without limits would read it all
                await exchange.write(block)
                sent += len(block)
        finally:
            exchange.upstream.sent = sent  # type: ignore[attr-defined]

    return handler


@pytest.mark.parametrize(
    ("start", "filler", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nx-long: ", b"a", "larger than 65536"),
        (b"HTTP/1.1 200 OK\r\n", b"x-a: b\r\n", "head is larger than 65536"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;", b"e", "chunk-size line"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nx-t: ", b"t", "trailer"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n", b"x-t: t\r\n", "trailers are larger"),
        (b"HTTP/1.1 200 " + b"O" * 20000, b"K", "status line"),
    ],
    ids=[
        "a header line",
        "many header lines",
        "a chunk extension",
        "a trailer line",
        "many trailers",
        "a reason",
    ],
)
async def test_an_endless_line_or_head_is_refused_after_its_limit(
    start: bytes, filler: bytes, reason: str
) -> None:
    tracemalloc.start()
    try:
        async with RawUpstream(endless(start, filler)) as server:  # type: ignore[arg-type]
            client = pool(server.port)
            with pytest.raises(MalformedAnswer, match=reason):
                await asyncio.wait_for(read(client), 10)
            await asyncio.wait_for(server.wait_for(lambda: server.closed == 1), 10)
            client.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Refused near the limit: what the server managed to send is what loopback buffers hold,
    # and what was held meanwhile (the server's side included) is a few reads.
    assert server.sent < 16 << 20  # type: ignore[attr-defined]
    assert peak < 4 << 20


async def test_a_large_head_in_one_read_is_refused() -> None:
    headers = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))  # 70 KiB
    raw = b"HTTP/1.1 200 OK\r\n" + headers + b"content-length: 2\r\n\r\nok"
    async with raw_upstream(answer_with(raw)) as server:
        client = pool(server.port)
        with pytest.raises(MalformedAnswer, match="head is larger than 65536"):
            await read(client)
        client.close()


async def test_lines_and_heads_within_the_limits_pass() -> None:
    line = b"x-long: " + b"v" * (16 * 1024 - 12) + b"\r\n"
    extension = b";" + b"e" * (16 * 1024 - 8)
    raw = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n" + line + b"\r\n"
        b"2" + extension + b"\r\nok\r\n0\r\n" + line + b"\r\n"
    )
    async with raw_upstream(answer_with(raw)) as server:
        client = pool(server.port)
        assert await read(client) == b"ok"
        client.close()


async def test_the_limits_are_settings() -> None:
    raw = b"HTTP/1.1 200 OK\r\nx-a: " + b"v" * 3000 + b"\r\ncontent-length: 2\r\n\r\nok"
    async with raw_upstream(answer_with(raw)) as server:
        client = pool(server.port, limits=Limits(line=2048, head=8192))
        with pytest.raises(MalformedAnswer, match="header line is longer than 2048"):
            await read(client)
        client.close()


# -- the request -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([("x-a", "value\r\nx-injected: 1")], "control character"),
        ([("x-a", "bare\nlf")], "control character"),
        ([("x-a", "nul\x00")], "control character"),
        ([("x-a\r\nx-b", "v")], "not an HTTP token"),
        ([("x a", "v")], "not an HTTP token"),
        ([("", "v")], "not an HTTP token"),
        ([("x-a", "snowman \u2603")], "not Latin-1"),
        ([("content-length", "5")], "framing headers"),
        ([("Transfer-Encoding", "chunked")], "framing headers"),
        ([("host", "elsewhere")], "framing headers"),
        ([("connection", "close")], "framing headers"),
        ([("x-a", "v" * 17000)], "header line is longer"),
        ([(f"x-{i}", "v" * 1000) for i in range(70)], "head is larger"),
    ],
)
def test_a_request_head_that_is_not_http_is_refused(headers: list[tuple[str, str]], problem: str) -> None:
    with pytest.raises(RequestError, match=problem):
        request_head("GET", "/", "host", headers, None, None, Limits())


@pytest.mark.parametrize(
    ("verb", "target"), [("GE T", "/"), ("GET\r\n", "/"), ("GET", "/a b"), ("GET", "/\r\nX: 1")]
)
def test_a_method_or_target_that_is_not_http_is_refused(verb: str, target: str) -> None:
    with pytest.raises(RequestError):
        request_head(verb, target, "host", [], None, None, Limits())


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_the_framing_comes_from_the_body() -> None:
    limits = Limits()
    # A header value that ends in what a framing line looks like is only a value.
    headers = [("x-note", "transfer-encoding: chunked")]
    counted = request_head("POST", "/", "h", headers, stream(b"abc"), 3, limits)
    assert counted.endswith(b"x-note: transfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n")
    chunked = request_head("POST", "/", "h", headers, stream(b"abc"), None, limits)
    assert chunked.endswith(b"\r\ntransfer-encoding: chunked\r\n\r\n")
    assert request_head("POST", "/", "h", [], b"abcd", None, limits).endswith(b"content-length: 4\r\n\r\n")
    assert request_head("PUT", "/", "h", [], None, None, limits).endswith(b"content-length: 0\r\n\r\n")
    assert request_head("GET", "/", "h", [], None, None, limits) == b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"


async def test_a_counted_stream_is_sent_as_counted_and_not_chunked() -> None:
    async with raw_upstream() as server:
        client = pool(server.port)
        headers = [("x-note", "transfer-encoding: chunked")]
        response = await client.request("POST", "/", headers, stream(b"ab", b"c"), length=3)
        assert await response.next_chunk() == (b"ok", True)
        client.close()
    [request] = server.requests
    assert (request.body, request.values("content-length"), request.values("transfer-encoding")) == (
        b"abc",
        ["3"],
        [],
    )


@pytest.mark.parametrize(
    ("chunks", "problem"), [((b"ab",), "after 2 of the 3"), ((b"ab", b"cd"), "longer than")]
)
async def test_a_stream_not_of_its_declared_length_aborts_the_request(
    chunks: tuple[bytes, ...], problem: str
) -> None:
    async with raw_upstream() as server:
        client = pool(server.port)
        with pytest.raises(RequestError, match=problem):
            await client.request("POST", "/", [], stream(*chunks), length=3)
        await asyncio.wait_for(server.wait_for(lambda: server.closed == 1), 5)
        assert await read(client) == b"ok"  # the pool's slot is free, on a new connection
        client.close()
    assert [(r.complete, r.connection) for r in server.requests] == [(False, 0), (True, 1)]


async def test_an_early_answer_stops_the_upload() -> None:
    stopped = asyncio.Event()

    async def too_large(exchange: Exchange) -> None:
        await exchange.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo much")
        await stopped.wait()  # reading nothing meanwhile: the client must stop on its own
        await exchange.until_client_closes()

    async def four_mib() -> AsyncIterator[bytes]:
        try:
            for _ in range(64):
                yield b"x" * 65536
        finally:
            stopped.set()

    async with RawUpstream(too_large, read_body=False) as server:
        client = pool(server.port)
        response = await asyncio.wait_for(client.request("PUT", "/", [], four_mib()), 5)
        assert (response.status, await response.next_chunk()) == (413, (b"too much", True))
        await asyncio.wait_for(stopped.wait(), 5)
        await asyncio.wait_for(server.wait_for(lambda: server.closed == 1), 5)  # not reused
        client.close()


async def test_a_body_that_fails_while_sent_leaves_no_answer_unretrieved() -> None:
    # The caller's body ends in an error (it went away, or passed the size limit): the
    # request fails with it, and the answer nobody awaits must not log "Future exception
    # was never retrieved" once the connection is dropped.
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with raw_upstream() as server:
            client = pool(server.port)

            async def body() -> AsyncIterator[bytes]:
                yield b"part"
                raise RuntimeError("the caller went away")

            with pytest.raises(RuntimeError, match="the caller went away"):
                await client.request("POST", "/", [], body())
            await server.wait_for(lambda: server.closed == 1)  # the client's side is gone by then
            client.close()
            gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_a_cancelled_request_frees_its_slot_and_closes_its_connection() -> None:
    async def never(exchange: Exchange) -> None:
        await exchange.until_client_closes()

    async with RawUpstream(never) as server:
        client = pool(server.port, limit=1)
        waiting = asyncio.ensure_future(client.request("GET", "/", [], None))
        await server.wait_for(lambda: len(server.requests) == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(server.wait_for(lambda: server.closed == 1), 5)
        server.handler = answer_with(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert await asyncio.wait_for(read(client), 5) == b"ok"  # the only slot is free again
        client.close()


async def test_an_answer_without_a_length_cut_by_a_reset_is_an_error() -> None:
    async def reset(exchange: Exchange) -> None:
        await exchange.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
        sock = exchange.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        exchange.writer.transport.abort()  # a reset, not the end of the answer

    async with RawUpstream(reset) as server:
        client = pool(server.port)
        with pytest.raises(UpstreamError):
            await read(client)
        client.close()


async def test_a_connection_lost_while_a_bytes_body_waits_leaves_no_unretrieved_future() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    answered = asyncio.Event()

    async def early_close(exchange: Exchange) -> None:
        await exchange.write(b"HTTP/1.1 413 Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbig")
        answered.set()
        exchange.writer.close()  # having read nothing of the body: the client's writes pause

    try:
        async with RawUpstream(early_close, read_body=False) as server:
            client = pool(server.port)
            response = await client.request("PUT", "/", [], b"x" * (32 << 20))
            paused = response._connection._drain  # writing paused: the body is mostly unsent
            assert paused is not None
            assert (response.status, await response.next_chunk()) == (413, (b"big", True))
            await asyncio.wait((paused,), timeout=10)  # done once the client's side is lost
            client.close()
            del response, paused
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_a_caller_leaving_during_a_stalled_upload_ends_the_exchange() -> None:
    # The target reads nothing more: the upload waits for the transport. The body is still
    # read meanwhile (a bounded amount), which is where a caller's leaving shows.
    async def stall(exchange: Exchange) -> None:
        await asyncio.Event().wait()  # reads nothing of the body, answers nothing

    async with RawUpstream(stall, read_body=False) as server:
        client = pool(server.port, limit=1)

        async def caller_body() -> AsyncIterator[bytes]:
            while True:
                busy = next(iter(client._busy), None)
                if busy is not None and busy._drain is not None and not busy._drain.done():
                    raise ClientGone  # asked for more while the target reads none: the caller left
                yield b"x" * 65536

        with pytest.raises(ClientGone):
            await asyncio.wait_for(client.request("PUT", "/", [], caller_body()), 10)
        assert client._busy == set()
        client.close()


async def test_a_full_duplex_target_gets_the_whole_body_while_it_answers() -> None:
    # The target answers at once and echoes the body as it reads it (Go's client, daprd's,
    # keeps uploading beside such an answer): the upload must go on.
    async def echo(exchange: Exchange) -> None:
        await exchange.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        pending = exchange.leftover  # the chunked body follows the head the server read
        while True:
            decoded, pending, ended = _dechunk(pending)
            if decoded:
                await exchange.write(b"%x\r\n%b\r\n" % (len(decoded), decoded))
            if ended:
                await exchange.write(b"0\r\n\r\n")
                return
            data = await exchange.reader.read(65536)
            if not data:
                return
            pending += data

    async def body() -> AsyncIterator[bytes]:
        for i in range(512):  # 32 MiB: more than loopback buffers hold, so it is still uploading
            yield bytes([65 + i % 26]) * 65536

    async with RawUpstream(echo, read_body=False) as server:
        client = pool(server.port)
        response = await asyncio.wait_for(client.request("POST", "/", [], body()), 10)
        echoed = b"".join([chunk async for chunk in response.chunks()])
        client.close()
    assert echoed == b"".join(bytes([65 + i % 26]) * 65536 for i in range(512))


def _dechunk(buffer: bytes) -> tuple[bytes, bytes, bool]:
    """The whole chunks at the start of `buffer`: their data, what is left, whether the last
    chunk came (a test's reader of the uploads it is sent, not a parser of answers)."""
    out = b""
    while True:
        end = buffer.find(b"\r\n")
        if end < 0:
            return out, buffer, False
        size = int(buffer[:end], 16)
        if size == 0:
            return out, b"", True
        if len(buffer) < end + 2 + size + 2:
            return out, buffer, False
        out += buffer[end + 2 : end + 2 + size]
        buffer = buffer[end + 2 + size + 2 :]


def test_a_host_that_cannot_be_a_header_is_refused() -> None:
    with pytest.raises(RequestError, match="Host header"):
        Pool("http", "a b", 80, ssl_context=None, check=None, connect_timeout=1, limit=1)


@pytest.mark.parametrize(("line", "head"), [(512, 65536), (16384, 8192)])
def test_limits_that_cannot_work_are_refused(line: int, head: int) -> None:
    from fastapi_dapr import InvocationSettings

    with pytest.raises(ValueError, match="max_line_size"):
        InvocationSettings(max_line_size=line, max_head_size=head)
    with pytest.raises(ValueError, match="at least 1 KiB"):
        Limits(line=line, head=head)
