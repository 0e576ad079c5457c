"""Service invocation attacked from both sides: hostile callers of the app's port, through a
real uvicorn (its h11 and its httptools servers), and hostile upstreams on loopback.

The sidecar API shares the app's port, so whatever reaches `/v1.0/invoke` may be an
attacker's: it must not smuggle a request to the target, spoof Dapr's caller headers,
hold the target's connection slots, deadlock an upload, or break the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from fastapi_dapr import Dapr, DaprAPIError, InvocationSettings
from fastapi_dapr.sidecar.app_channel import AppChannel
from fastapi_dapr.testing import DaprTest

from ..hostile import Exchange, RawUpstream, answer_ok
from ..servers import serve

SERVERS = ["h11", "httptools"]


@contextlib.contextmanager
def server_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """uvicorn's own error log in `caplog` too (its loggers do not propagate to the root)."""
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)


SMUGGLED = b"GET /admin HTTP/1.1\r\nhost: up\r\ndapr-caller-app-id: spoofed\r\ncontent-length: 0\r\n\r\n"


@contextlib.asynccontextmanager
async def in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app's ASGI interface, its lifespan running: headers and chunk
    boundaries exactly as the test writes them, which no HTTP server would pass on."""
    transport = httpx.ASGITransport(app=app)
    async with DaprTest(app), httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


def make_app(tmp_path: Path, upstream: RawUpstream, **options: Any) -> tuple[FastAPI, Dapr]:
    resources = tmp_path / "resources"
    resources.mkdir(exist_ok=True)
    (resources / "up.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: up}\n"
        f"spec:\n  baseUrl: {upstream.base_url}\n"
    )
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", resources_path=resources, **options)

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    return app, dapr


def smuggling_chunks() -> list[bytes]:
    """A body whose chunks, once chunk-encoded by a client that wrongly thought it had to,
    put `SMUGGLED` right after the `Content-Length` bytes the target reads: 40 chunks of
    one byte, then one that carries it at the offset the encoding overhead pushes to."""
    small = [b"a"] * 40
    overhead = sum(len(b"%x\r\n\r\n" % len(chunk)) for chunk in small)  # before the last chunk
    size = 512
    offset = size - overhead - len(b"%x\r\n" % size)
    last = b"b" * offset + SMUGGLED
    return [*small, last + b"c" * (size - len(last))]


async def streamed(chunks: list[bytes] | tuple[bytes, ...]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.parametrize("http", SERVERS)
async def test_a_framing_lookalike_header_smuggles_nothing_through_uvicorn(tmp_path: Path, http: str) -> None:
    chunks = smuggling_chunks()
    body = b"".join(chunks)

    async with RawUpstream() as upstream:
        app, _ = make_app(tmp_path, upstream)
        async with DaprTest(app), serve(app, http=http) as url, httpx.AsyncClient(base_url=url) as client:
            answer = await client.post(
                "/v1.0/invoke/up/method/x",
                content=streamed(chunks),
                headers={"content-length": str(len(body)), "x-note": "transfer-encoding: chunked"},
            )
            await upstream.wait_for(lambda: upstream.requests[-1].complete)
    assert answer.status_code == 200
    [request] = upstream.requests  # one request, and the body is the caller's, byte for byte
    assert (request.method, request.target, request.body) == ("POST", "/x", body)
    assert request.values("x-note") == ["transfer-encoding: chunked"]
    assert request.values("content-length") == [str(len(body))]
    assert request.values("transfer-encoding") == []


async def test_a_framing_lookalike_header_smuggles_nothing_with_exact_chunks(tmp_path: Path) -> None:
    # In process the chunk boundaries are the caller's to choose: the worst case, exactly.
    chunks = smuggling_chunks()
    body = b"".join(chunks)

    async with RawUpstream() as upstream:
        app, _ = make_app(tmp_path, upstream)
        async with in_process(app) as client:
            answer = await client.post(
                "/v1.0/invoke/up/method/x",
                content=streamed(chunks),
                headers={"content-length": str(len(body)), "x-note": "transfer-encoding: chunked"},
            )
    assert answer.status_code == 200
    assert [(r.method, r.target, r.body) for r in upstream.requests] == [("POST", "/x", body)]
    assert all(r.values("dapr-caller-app-id") != ["spoofed"] for r in upstream.requests)


async def test_the_app_channel_smuggles_nothing() -> None:
    chunks = smuggling_chunks()
    body = b"".join(chunks)
    async with RawUpstream() as upstream:
        channel = AppChannel("127.0.0.1", upstream.port)
        messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        messages.append({"type": "http.request", "body": b"", "more_body": False})
        finished = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await finished.wait()
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/x",
            "raw_path": b"/x",
            "query_string": b"",
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"x-note", b"transfer-encoding: chunked"),
                (b"host", b"127.0.0.1:3500"),
            ],
        }
        try:
            await channel(scope, receive, send)
            finished.set()
            await upstream.wait_for(lambda: upstream.requests[-1].complete)
        finally:
            await channel.close()
    assert sent[0]["status"] == 200
    assert [(r.method, r.target, r.body) for r in upstream.requests] == [("POST", "/x", body)]
    assert upstream.requests[0].values("host") == [f"127.0.0.1:{upstream.port}"]


# -- Dapr.invoke with a whole incoming request's headers ---------------------------------------


async def test_dapr_invoke_with_an_incoming_requests_headers_sends_one_framing(tmp_path: Path) -> None:
    async with RawUpstream() as upstream:
        app, dapr = make_app(tmp_path, upstream)

        @app.post("/relay")
        async def relay(request: Request) -> dict[str, int]:
            answer = await dapr.invoke(
                "up", "whole", http_method="POST", content=await request.body(), headers=dict(request.headers)
            )
            return {"status": answer.status_code}

        @app.post("/relay-stream")
        async def relay_stream(request: Request) -> dict[str, int]:
            answer = await dapr.invoke(
                "up", "streamed", http_method="POST", content=request.stream(), headers=dict(request.headers)
            )
            return {"status": answer.status_code}

        headers = {
            "x-custom": "kept",
            "connection": "keep-alive, x-hop",
            "x-hop": "dropped",
            "te": "trailers",
        }
        async with DaprTest(app), serve(app) as url, httpx.AsyncClient(base_url=url) as client:
            whole = await client.post("/relay", content=b"payload", headers=headers)
            streamed = await client.post("/relay-stream", content=b"streamed payload", headers=headers)
    assert (whole.json(), streamed.json()) == ({"status": 200}, {"status": 200})
    for request, body in zip(upstream.requests, (b"payload", b"streamed payload"), strict=True):
        assert request.values("host") == [f"127.0.0.1:{upstream.port}"]
        assert request.values("content-length") == [str(len(body))]  # counted, not chunked
        assert request.body == body
        for dropped in ("transfer-encoding", "connection", "x-hop", "te"):
            assert request.values(dropped) == [], dropped
        assert request.values("x-custom") == ["kept"]


@pytest.mark.parametrize(
    ("chunks", "problem"), [((b"abc",), "after 3 of the 10"), ((b"x" * 11,), "longer than")]
)
async def test_dapr_invoke_counts_a_stream_against_its_declared_length(
    tmp_path: Path, chunks: tuple[bytes, ...], problem: str
) -> None:
    async with RawUpstream() as upstream:
        app, dapr = make_app(tmp_path, upstream)
        async with DaprTest(app):
            with pytest.raises(DaprAPIError, match=problem) as refused:
                await dapr.invoke(
                    "up", "x", http_method="PUT", content=streamed(chunks), headers={"content-length": "10"}
                )
            await upstream.wait_for(lambda: upstream.closed == 1)  # the request was cut off
    assert refused.value.status_code == 400
    assert [r.complete for r in upstream.requests] == [False]


@pytest.mark.parametrize(
    "headers",
    [{"x-a": "value\r\nx-injected: 1"}, {"x-a": "nul\x00"}, {"x a": "v"}, {"x-a\nb": "v"}, {"x-a": "\u2603"}],
)
async def test_dapr_invoke_refuses_a_header_that_is_not_http(tmp_path: Path, headers: dict[str, str]) -> None:
    async with RawUpstream() as upstream:
        app, dapr = make_app(tmp_path, upstream)
        async with DaprTest(app):
            with pytest.raises(ValueError, match="headers: "):
                await dapr.invoke("up", "x", headers=headers)
            with pytest.raises(ValueError, match="headers: "):
                await dapr.invoke("orders", "ping", headers=headers)  # in process too
    assert upstream.requests == []


async def test_the_api_refuses_a_header_that_is_not_http(tmp_path: Path) -> None:
    # uvicorn's parsers refuse these; an ASGI caller in process can still send them.
    async with RawUpstream() as upstream:
        app, _ = make_app(tmp_path, upstream)
        async with in_process(app) as client:
            answer = await client.get("/v1.0/invoke/up/method/x", headers={"x-a": "a\r\nx-injected: 1"})
    assert answer.status_code == 400
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "control character" in answer.json()["message"]
    assert upstream.requests == []


# -- callers that leave ------------------------------------------------------------------------


async def hang_or_stall(exchange: Exchange) -> None:
    if exchange.request.target == "/stall":
        await exchange.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nten bytes.")
    if exchange.request.target in ("/hang", "/stall"):
        await exchange.until_client_closes()  # the answer never comes, or never ends
        return
    await answer_ok(exchange)


@pytest.mark.parametrize("http", SERVERS)
@pytest.mark.parametrize("path", ["/hang", "/stall"])
async def test_callers_that_leave_give_their_connection_slots_back(
    tmp_path: Path, http: str, path: str
) -> None:
    async with RawUpstream(hang_or_stall) as upstream:
        app, _ = make_app(tmp_path, upstream, invocation=InvocationSettings(pool_size=2))
        async with DaprTest(app), serve(app, http=http) as url:
            port = int(url.rsplit(":", 1)[1])
            callers = []
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    f"GET /v1.0/invoke/up/method{path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode()
                )
                await writer.drain()
                callers.append((reader, writer))
            await upstream.wait_for(lambda: len(upstream.requests) == 2)
            if path == "/stall":
                for reader, _ in callers:
                    await reader.readuntil(b"ten bytes.")  # the head and the start came
            for _, writer in callers:
                writer.close()  # both callers go away
            # The proxy cancels both exchanges and closes their connections...
            await asyncio.wait_for(upstream.wait_for(lambda: upstream.closed == 2), 10)
            async with httpx.AsyncClient(base_url=url) as client:
                # ...so the next call to this target, on a healthy path, is served at once.
                answer = await asyncio.wait_for(client.get("/v1.0/invoke/up/method/ok"), 10)
    assert (answer.status_code, answer.content) == (200, b"ok")


# -- an early answer ---------------------------------------------------------------------------


async def too_large_at_once(exchange: Exchange) -> None:
    await exchange.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo much")
    await asyncio.Event().wait()  # and reads nothing more of the upload


async def four_mib() -> AsyncIterator[bytes]:
    for _ in range(64):
        yield b"x" * 65536


@pytest.mark.parametrize("http", SERVERS)
async def test_an_early_413_reaches_the_caller_of_a_4_mib_upload(tmp_path: Path, http: str) -> None:
    async with RawUpstream(too_large_at_once, read_body=False) as upstream:
        app, dapr = make_app(tmp_path, upstream, max_body_size=8 << 20)
        async with DaprTest(app), serve(app, http=http) as url, httpx.AsyncClient(base_url=url) as client:
            answer = await asyncio.wait_for(
                client.put("/v1.0/invoke/up/method/upload", content=four_mib()), 10
            )
            invoked = await asyncio.wait_for(
                dapr.invoke("up", "upload", http_method="PUT", content=four_mib()), 10
            )
    assert (answer.status_code, answer.content) == (413, b"too much")
    assert (invoked.status_code, invoked.content) == (413, b"too much")


# -- malformed answers through the proxy ---------------------------------------------------------


def answering(raw: bytes) -> Any:
    async def handler(exchange: Exchange) -> None:
        await exchange.write(raw)
        await exchange.until_client_closes()

    return handler


MALFORMED = {
    "NUL in a value": b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
    "xchunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "status 000": b"HTTP/1.1 000 OK\r\ncontent-length: 2\r\n\r\nok",
    "status 1000": b"HTTP/1.1 1000 OK\r\ncontent-length: 2\r\n\r\nok",
    "an obs-fold line": b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
    "conflicting lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk",
    "101 unasked": b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    "an endless header line": b"HTTP/1.1 200 OK\r\nx-long: " + b"a" * (80 * 1024),
}


@pytest.mark.parametrize("http", SERVERS)
@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_answer_is_dapr_s_failed_invocation(
    tmp_path: Path, http: str, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with RawUpstream(answering(raw)) as upstream:
        app, _ = make_app(tmp_path, upstream)
        async with DaprTest(app), serve(app, http=http) as url, httpx.AsyncClient(base_url=url) as client:
            with caplog.at_level(logging.WARNING), server_logs(caplog):
                answer = await asyncio.wait_for(client.get("/v1.0/invoke/up/method/x"), 10)
                again = await asyncio.wait_for(client.get("/v1.0/invoke/up/method/x"), 10)
            await upstream.wait_for(lambda: upstream.closed == 2)
    assert answer.status_code == 500
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert answer.json()["message"].startswith("failed to invoke, id: up, err: ")
    assert "not valid HTTP/1.1" in answer.json()["message"]
    assert again.status_code == 500
    assert [r.connection for r in upstream.requests] == [0, 1]  # never reused
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["fastapi_dapr", "fastapi_dapr"]  # one per answer
    assert all(r.exc_info is None for r in caplog.records)  # no traceback anywhere


async def test_an_answer_cut_by_an_endless_chunk_extension_ends_the_callers_stream(tmp_path: Path) -> None:
    async def endless_extension(exchange: Exchange) -> None:
        await exchange.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n1;")
        try:
            for _ in range(4096):  # 256 MiB, were the client to read it all
                await exchange.write(b"e" * 65536)
        except ConnectionError:
            return

    async with RawUpstream(endless_extension) as upstream:
        app, _ = make_app(tmp_path, upstream)
        async with DaprTest(app), serve(app) as url, httpx.AsyncClient(base_url=url) as client:
            async with client.stream("GET", "/v1.0/invoke/up/method/x") as answer:
                assert answer.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):
                    await asyncio.wait_for(answer.aread(), 10)
            assert (await client.get("/ping")).json() == "pong"


# -- answers an ASGI server cannot pass on as they are -----------------------------------------


@pytest.mark.parametrize("http", SERVERS)
@pytest.mark.parametrize("status", [204, 304])
async def test_a_bodiless_answer_with_a_length_reaches_the_caller(
    tmp_path: Path, http: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    # A 304 may carry the length of what it did not send; uvicorn would wait for that body.
    raw = f"HTTP/1.1 {status} No Body\r\netag: x\r\ncontent-length: 10\r\n\r\n".encode()
    async with RawUpstream(answering(raw)) as upstream:
        app, _ = make_app(tmp_path, upstream)
        async with DaprTest(app), serve(app, http=http) as url, httpx.AsyncClient(base_url=url) as client:
            with caplog.at_level(logging.WARNING), server_logs(caplog):
                answer = await asyncio.wait_for(client.get("/v1.0/invoke/up/method/x"), 10)
                await client.get("/ping")  # the server has finished with the first request
    assert (answer.status_code, answer.headers["etag"], answer.content) == (status, "x", b"")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- redirects ----------------------------------------------------------------------------------


async def test_redirect_hops_on_one_origin_reuse_the_connection(tmp_path: Path) -> None:
    async def hops(exchange: Exchange) -> None:
        if exchange.request.target.startswith("/hop"):
            step = int(exchange.request.target[4:])
            where = f"/hop{step + 1}" if step < 3 else "/done"
            await exchange.write(
                f"HTTP/1.1 302 Found\r\nlocation: {where}\r\ncontent-length: 5\r\n\r\nmoved".encode()
            )
            return
        await answer_ok(exchange)

    async with RawUpstream(hops) as upstream:
        app, dapr = make_app(tmp_path, upstream)
        async with DaprTest(app):
            answers = [await dapr.invoke("up", "hop0") for _ in range(3)]
    assert [(a.status_code, a.content) for a in answers] == [(200, b"ok")] * 3
    assert [r.target for r in upstream.requests[:5]] == ["/hop0", "/hop1", "/hop2", "/hop3", "/done"]
    assert {r.connection for r in upstream.requests} == {0}  # every hop, every call, one connection


# -- remote mode ---------------------------------------------------------------------------------


async def test_remote_mode_sends_daprd_the_apps_token_only(tmp_path: Path) -> None:
    async with RawUpstream() as daprd:
        app = FastAPI()
        dapr = Dapr(
            app, app_id="orders", mode="remote", dapr_http_endpoint=daprd.base_url, api_token="app-token"
        )
        caller_headers = {"dapr-api-token": "the-caller's", "host": "elsewhere", "content-length": "99"}
        async with app.router.lifespan_context(app):
            answer = await dapr.invoke(
                "billing", "x", http_method="POST", content=b"abc", headers=caller_headers
            )
    assert answer.status_code == 200
    [request] = daprd.requests
    assert request.values("dapr-api-token") == ["app-token"]
    assert request.values("host") == [f"127.0.0.1:{daprd.port}"]
    assert (request.values("content-length"), request.body) == (["3"], b"abc")


async def test_dapr_invoke_of_an_answer_cut_short_is_a_failed_invocation(tmp_path: Path) -> None:
    async def cut(exchange: Exchange) -> None:
        await exchange.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
        exchange.writer.close()

    async with RawUpstream(cut) as upstream:
        app, dapr = make_app(tmp_path, upstream)
        async with DaprTest(app):
            with pytest.raises(DaprAPIError, match="the answer was cut short") as failed:
                await dapr.invoke("up", "x")
    assert (failed.value.status_code, failed.value.error_code) == (500, "ERR_DIRECT_INVOKE")
