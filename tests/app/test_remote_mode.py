"""Remote mode: under a real daprd nothing of the sidecar side starts; publish goes to daprd."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fastapi_dapr import CloudEvent, Dapr, DaprAPIError
from fastapi_dapr._trace import CURRENT

from ..hostile import Exchange, RawUpstream, answer_with
from ..servers import serve


def fake_daprd(received: list[dict[str, Any]], answer: Response | None = None) -> FastAPI:
    """Records what a real daprd would receive on its publish API."""
    daprd = FastAPI()

    @daprd.post("/v1.0/publish/{pubsub}/{topic:path}")
    async def publish(pubsub: str, topic: str, request: Request) -> Response:
        received.append(
            {
                "raw_path": request.scope["raw_path"].decode(),
                "query": dict(request.query_params),
                "headers": dict(request.headers),
                "body": await request.body(),
            }
        )
        return answer or Response(status_code=204)

    return daprd


def test_dapr_http_port_selects_remote_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPR_HTTP_PORT", "3999")
    app = FastAPI()
    dapr = Dapr(app)
    assert dapr.mode == "remote"
    assert dapr.dapr_http_endpoint == "http://127.0.0.1:3999"

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None: ...

    with TestClient(app) as client:
        # daprd serves its API on its own port: the app serves none of it.
        assert client.post("/v1.0/publish/pubsub/orders", json={}).status_code == 404
        assert client.get("/v1.0/healthz").status_code == 404
        assert client.get("/dapr/subscribe").json()[0]["topic"] == "orders"


async def test_publish_posts_to_daprd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPR_API_TOKEN", "tok")
    received: list[dict[str, Any]] = []
    async with serve(fake_daprd(received)) as url:
        app = FastAPI()
        dapr = Dapr(app, mode="remote", dapr_http_endpoint=url)
        await dapr.publish("pubsub", "a/b c+d", {"id": 1}, metadata={"ttlInSeconds": "60"})
        await dapr.publish("pubsub", "raw", b"\x00\x01")
        await dapr.publish("pubsub", "text", "hello", content_type="text/csv")
        await dapr.backend.close()
    first, second, third = received
    # Each parameter escaped whole, so daprd's QueryUnescape gives the topic back.
    assert first["raw_path"] == "/v1.0/publish/pubsub/a%2Fb%20c%2Bd"
    assert first["query"] == {"metadata.ttlInSeconds": "60"}
    assert first["headers"]["content-type"] == "application/json"
    assert first["headers"]["dapr-api-token"] == "tok"
    assert first["body"] == b'{"id":1}'
    assert (second["headers"]["content-type"], second["body"]) == ("application/octet-stream", b"\x00\x01")
    assert (third["headers"]["content-type"], third["body"]) == ("text/csv", b"hello")


async def test_daprd_errors_are_raised_with_its_code() -> None:
    received: list[dict[str, Any]] = []
    answer = JSONResponse(
        {"errorCode": "ERR_PUBSUB_NOT_FOUND", "message": "pubsub nope is not found"}, status_code=404
    )
    async with serve(fake_daprd(received, answer)) as url:
        dapr = Dapr(FastAPI(), mode="remote", dapr_http_endpoint=url)
        with pytest.raises(DaprAPIError) as info:
            await dapr.publish("nope", "t", {})
        await dapr.backend.close()
    assert info.value.status_code == 404
    assert info.value.error_code == "ERR_PUBSUB_NOT_FOUND"
    assert info.value.message == "pubsub nope is not found"


async def test_unreachable_daprd_is_a_publish_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dapr = Dapr(FastAPI(), mode="remote", dapr_http_endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(DaprAPIError) as info:
        await dapr.publish("pubsub", "t", {})
    await dapr.backend.close()
    assert info.value.status_code == 500
    assert info.value.error_code == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert "could not be reached" in info.value.message


# -- Dapr.invoke through daprd ---------------------------------------------------------------------

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def remote(daprd: RawUpstream, **settings: Any) -> tuple[FastAPI, Dapr]:
    app = FastAPI()
    return app, Dapr(app, app_id="orders", mode="remote", dapr_http_endpoint=daprd.base_url, **settings)


async def parts(*chunks: bytes) -> Any:
    for chunk in chunks:
        yield chunk


async def test_invoke_goes_to_daprds_invoke_api_escaped_as_daprd_reads_it() -> None:
    async with RawUpstream() as daprd:
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            answer = await dapr.invoke(
                "billing/v2", "/items/a b", http_method="put", json={"n": 1}, params={"q": "v w"}
            )
    assert (answer.status_code, answer.content) == (200, b"ok")
    [request] = daprd.requests
    assert (request.method, request.target) == ("PUT", "/v1.0/invoke/billing%2Fv2/method/items/a%20b?q=v+w")
    assert (request.values("content-type"), request.body) == (["application/json"], b'{"n":1}')
    assert request.values("dapr-api-token") == []  # none configured: none sent
    # Nothing the caller did not give but the framing: no client's own headers (Accept-Encoding...).
    assert {name for name, _ in request.headers} == {"host", "content-length", "content-type"}


async def test_streamed_bodies_both_ways_and_a_declared_length_honoured() -> None:
    async def chunked(exchange: Exchange) -> None:
        await exchange.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await exchange.write(b"3\r\nabc\r\n")
        await exchange.write(b"2\r\nde\r\n0\r\n\r\n")

    async with RawUpstream(chunked) as daprd:
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            declared = await dapr.invoke(
                "svc", "up", http_method="POST", content=parts(b"ab", b"cd"), headers={"Content-Length": "4"}
            )
            async with await dapr.invoke(
                "svc", "up", http_method="POST", content=parts(b"x", b"y"), stream=True
            ) as streamed:
                chunks = [chunk async for chunk in streamed.aiter_bytes()]
    assert declared.content == b"abcde"
    assert b"".join(chunks) == b"abcde"
    first, second = daprd.requests
    assert (first.values("content-length"), first.values("transfer-encoding"), first.body) == (
        ["4"],
        [],
        b"abcd",
    )
    assert (second.values("transfer-encoding"), second.body) == (["chunked"], b"xy")


async def test_the_apps_token_replaces_a_callers_and_none_passes_a_callers_on() -> None:
    async with RawUpstream() as daprd:
        app, dapr = remote(daprd, api_token="app-token")
        _, tokenless = remote(daprd, api_token="")
        async with app.router.lifespan_context(app):
            await dapr.invoke("svc", "x", headers={"dapr-api-token": "the caller's"})
            await tokenless.invoke("svc", "x", headers={"dapr-api-token": "the caller's"})
        await tokenless.backend.close()
    first, second = daprd.requests
    assert first.values("dapr-api-token") == ["app-token"]
    assert second.values("dapr-api-token") == ["the caller's"]


async def test_traceparent_a_given_one_else_the_current_one_one_not_read_dropped() -> None:
    async with RawUpstream() as daprd:
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            await dapr.invoke("svc", "given", headers={"traceparent": TRACE, "tracestate": "k=v"})
            await dapr.invoke("svc", "broken", headers={"traceparent": "nonsense", "tracestate": "k=v"})
            token = CURRENT.set((TRACE, ""))
            try:
                await dapr.invoke("svc", "current")
            finally:
                CURRENT.reset(token)
    given, broken, current = daprd.requests
    assert (given.values("traceparent"), given.values("tracestate")) == ([TRACE], ["k=v"])
    assert (broken.values("traceparent"), broken.values("tracestate")) == ([], [])
    assert current.values("traceparent") == [TRACE]


async def test_an_answer_cut_short_is_err_direct_invoke_or_an_oserror_when_streamed() -> None:
    async def cut(exchange: Exchange) -> None:
        await exchange.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
        exchange.writer.close()

    async with RawUpstream(cut) as daprd:
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            with pytest.raises(DaprAPIError, match="the answer was cut short") as failed:
                await dapr.invoke("svc", "x")
            async with await dapr.invoke("svc", "x", stream=True) as streamed:
                with pytest.raises(OSError):  # noqa: PT011 - the kind is the contract, not the words
                    async for _ in streamed.aiter_bytes():
                        pass
    assert (failed.value.status_code, failed.value.error_code) == (500, "ERR_DIRECT_INVOKE")


async def test_no_answer_within_the_timeout_and_no_daprd_are_err_direct_invoke() -> None:
    async def never(exchange: Exchange) -> None:
        await exchange.until_client_closes()

    async with RawUpstream(never) as daprd:
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            with pytest.raises(DaprAPIError, match=r"within 0\.1s") as late:
                await dapr.invoke("svc", "x", timeout=0.1)
    assert (late.value.status_code, late.value.error_code) == (500, "ERR_DIRECT_INVOKE")
    with pytest.raises(DaprAPIError) as unreachable:
        await dapr.invoke("svc", "x")  # the server is gone
    await dapr.backend.close()
    assert (unreachable.value.status_code, unreachable.value.error_code) == (500, "ERR_DIRECT_INVOKE")
    where = f"daprd at 127.0.0.1:{daprd.port}"
    assert late.value.message == f"failed to invoke, id: svc, err: no answer from {where} within 0.1s"
    assert unreachable.value.message.startswith(
        f"failed to invoke, id: svc, err: could not connect to {where}"
    )


async def test_invoke_keeps_no_cookie_and_takes_no_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nset-cookie: session=1; Path=/\r\ncontent-length: 2\r\n\r\nok"
    async with RawUpstream(answer_with(answer)) as daprd, RawUpstream() as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.base_url)
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            first = await dapr.invoke("svc", "x")
            await dapr.invoke("svc", "x")
    assert first.headers["set-cookie"] == "session=1; Path=/"  # passed on to the caller, not kept
    assert [request.values("cookie") for request in daprd.requests] == [[], []]
    assert proxy.requests == []


async def test_invoke_sends_latin1_header_values_as_given() -> None:
    async with RawUpstream() as daprd:
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            await dapr.invoke("svc", "x", headers={"x-name": "caf\xe9"})
    [request] = daprd.requests
    assert request.values("x-name") == ["caf\xe9"]


async def test_a_streamed_body_not_of_its_declared_length_is_refused_with_400() -> None:
    async with RawUpstream() as daprd:
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            failures = []
            for body in (parts(b"ab", b"cde"), parts(b"ab")):
                with pytest.raises(DaprAPIError) as failed:
                    await dapr.invoke(
                        "svc", "x", http_method="POST", content=body, headers={"content-length": "4"}
                    )
                failures.append((failed.value.status_code, failed.value.error_code, failed.value.message))
    assert failures == [
        (
            400,
            "ERR_DIRECT_INVOKE",
            "failed to invoke, id: svc, err: the body is longer than the 4 bytes it declared",
        ),
        (
            400,
            "ERR_DIRECT_INVOKE",
            "failed to invoke, id: svc, err: the body ended after 2 of the 4 bytes it declared",
        ),
    ]


async def test_a_streamed_body_that_fails_is_err_direct_invoke() -> None:
    async def failing() -> Any:
        yield b"ab"
        raise ValueError("boom")

    async with RawUpstream() as daprd:
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            boom = r"id: svc, err: ValueError talking to daprd at [0-9.:]+: boom"
            with pytest.raises(DaprAPIError, match=boom) as failed:
                await dapr.invoke("svc", "x", http_method="POST", content=failing())
    assert (failed.value.status_code, failed.value.error_code) == (500, "ERR_DIRECT_INVOKE")


LONG = b"x" * 10_000


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 600 Odd\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-long: " + b"y" * 17_000 + b"\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"x-%d: %s\r\n" % (i, LONG) for i in range(7))
        + b"content-length: 0\r\n\r\n",
    ],
    ids=["status-600", "http-2.0", "length-and-chunked", "line-over-16k", "head-over-64k"],
)
async def test_answers_outside_http11_or_its_limits_are_err_direct_invoke(head: bytes) -> None:
    async with RawUpstream(answer_with(head, close=True)) as daprd:
        app, dapr = remote(daprd)
        async with app.router.lifespan_context(app):
            with pytest.raises(DaprAPIError, match=r"the answer is not valid HTTP/1\.1") as failed:
                await dapr.invoke("svc", "x")
    assert (failed.value.status_code, failed.value.error_code) == (500, "ERR_DIRECT_INVOKE")


OLD_STARLETTE = "ignore:The anyio.abc.BlockingPortal alias:DeprecationWarning"

REMOTE_SCRIPT = """
import asyncio, os, sys
os.environ["DAPR_HTTP_PORT"] = "3500"
import httpx
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from tests.servers import serve

async def daprd_api(request: Request) -> Response:
    body = await request.body()
    if request.url.path.startswith("/v1.0/invoke/"):
        async def answer():
            yield b"got "
            yield body
        return StreamingResponse(answer())
    return Response(status_code=204)

daprd = Starlette(routes=[Route("/{path:path}", daprd_api, methods=["GET", "POST"])])

from fastapi_dapr import BulkPublishEntry, CloudEvent, Dapr
import fastapi_dapr.testing
from fastapi_dapr.testing import DaprTest, FakeClock

app = FastAPI()

async def main() -> None:
    async with serve(daprd) as url:
        dapr = Dapr(app, dapr_http_endpoint=url)
        assert dapr.mode == "remote"

        @dapr.subscribe("pubsub", "t", match='event.type == "x"')
        async def h(event: CloudEvent) -> None: ...

        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                assert (await client.get("/dapr/subscribe")).status_code == 200
            await dapr.publish("pubsub", "t", {"n": 1}, metadata={"ttlInSeconds": "9"})
            assert await dapr.publish_bulk("pubsub", "t", [1, BulkPublishEntry("two")]) == []
            assert (await dapr.invoke("svc", "m", http_method="POST", content=b"x")).content == b"got x"

            async def parts():
                yield b"y"

            async with await dapr.invoke("svc", "m", http_method="POST", content=parts(), stream=True) as r:
                assert b"".join([c async for c in r.aiter_bytes()]) == b"got y"
        clock = FakeClock()
        await clock.sleep(3)
        assert (clock.monotonic(), clock.sleeps) == (3, [3])
        try:
            DaprTest(app)
        except RuntimeError as exc:
            assert "embedded" in str(exc)
        else:
            raise AssertionError("DaprTest ran a remote-mode app")

asyncio.run(main())
loaded = [
    m for m in sys.modules
    if m.split(".")[0] == "yaml"
    or m.split(".")[:2] in [["fastapi_dapr", side] for side in ("sidecar", "brokers", "secretstores")]
]
print(loaded)
"""


@pytest.mark.process
def test_remote_mode_never_loads_the_sidecar_side() -> None:
    # Publishing, bulk publishing, invoking (plain and streamed) and the testing helpers that
    # make sense under a real daprd: none of it loads the sidecar side, the families or yaml.
    out = subprocess.run(
        # Warnings are errors there too, but for the one Starlette before 1.0 causes by
        # importing an alias anyio now deprecates (not ours; CI's oldest-versions run).
        [sys.executable, "-W", "error", "-W", OLD_STARLETTE, "-c", REMOTE_SCRIPT],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.process
def test_the_check_of_what_remote_mode_loads_sees_the_sidecar_side() -> None:
    # The same script, with one line that loads the sidecar side: the check must see it.
    script = REMOTE_SCRIPT.replace(
        "asyncio.run(main())", "import fastapi_dapr.sidecar.embedded\nasyncio.run(main())"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.strip()
    assert "'fastapi_dapr.sidecar.embedded'" in loaded
    assert "'fastapi_dapr.brokers'" in loaded  # the runtime's families come with it
