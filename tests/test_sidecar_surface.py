"""The sidecar API's surface: headers it cannot read."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_dapr import Dapr
from fastapi_dapr.testing import DaprTest

from .servers import serve


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.exc_info]


# -- headers the API cannot read --------------------------------------------------------------


async def asgi_request(
    app: Any, method: str, path: str, headers: dict[str, str], body: bytes = b"{}"
) -> tuple[int, bytes]:
    """One request through the app's ASGI interface, from a loopback client, with exactly
    these headers (an HTTP client would correct some of them)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(name.encode(), value.encode("latin-1")) for name, value in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    return status, b"".join(
        message.get("body", b"") for message in sent if message["type"] == "http.response.body"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "["},
        {"host": "[::1"},
        {"host": "[no-address]:8000"},
        {"host": "127.0.0.1:8000", "origin": "["},
        {"host": "127.0.0.1:8000", "origin": "http://[::1"},
        {"host": "127.0.0.1:8000", "origin": "http://[ÿ]"},
    ],
)
async def test_a_host_or_origin_that_cannot_be_read_is_not_local(
    headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    Dapr(app, api_token="")
    async with DaprTest(app):
        status, body = await asgi_request(app, "POST", "/v1.0/publish/pubsub/orders", headers)
    assert status == 403
    assert json.loads(body)["errorCode"] == "ERR_FORBIDDEN"
    assert tracebacks(caplog) == []


async def test_the_metrics_port_refuses_a_host_it_cannot_read() -> None:
    from fastapi_dapr._metrics import Metrics
    from fastapi_dapr._standalone import MetricsEndpoint

    status, body = await asgi_request(MetricsEndpoint(Metrics("a")), "GET", "/metrics", {"host": "["})
    assert (status, json.loads(body)["errorCode"]) == (403, "ERR_FORBIDDEN")


async def test_a_host_that_cannot_be_read_is_refused_through_uvicorn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    Dapr(app, api_token="")
    server_log = logging.getLogger("uvicorn.error")  # it does not propagate to the root logger
    server_log.addHandler(caplog.handler)
    try:
        async with serve(app) as url:
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            for bad in (b"Host: [", b"Host: 127.0.0.1\r\nOrigin: ["):
                writer.write(b"POST /v1.0/publish/pubsub/orders HTTP/1.1\r\n" + bad + b"\r\n")
                writer.write(b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                assert head.startswith(b"HTTP/1.1 403 "), head
                assert json.loads(body)["errorCode"] == "ERR_FORBIDDEN"
            writer.close()
            await writer.wait_closed()
    finally:
        server_log.removeHandler(caplog.handler)
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        # `str.isdigit` is true for "²", which `int` refuses: a length that is not one is ignored,
        # the body is what arrives (servers in front refuse such a length already).
        ("POST", "/v1.0/publish/pubsub/orders", {"content-length": "²"}, 204),
        ("POST", "/v1.0-alpha1/publish/bulk/pubsub/orders", {"content-length": "¹2"}, 400),
        ("POST", "/v1.0/invoke/app1/method/hello", {"content-length": "²"}, 200),
        ("POST", "/v1.0/publish/pubsub/orders", {"traceparent": "00-[-]-zz", "tracestate": "=,=="}, 204),
        ("POST", "/v1.0/publish/pubsub/orders", {"content-type": "application/json; charset=[ÿ"}, 204),
        ("GET", "/v1.0/invoke/app1/method/hello", {"authorization": "Basic ÿÿÿ"}, 200),
        ("GET", "/v1.0/invoke/app1/method/hello", {"authorization": "Basic ZGFwci1hcHAtaWQ6"}, 200),
        ("POST", "/v1.0/publish/pubsub/orders", {"sec-fetch-site": "ÿ["}, 403),
        ("POST", "/v1.0/publish/pubsub/orders", {"forwarded": "for=["}, 403),
    ],
)
async def test_headers_the_api_reads_never_crash_it(
    method: str, path: str, headers: dict[str, str], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    Dapr(app, app_id="app1", api_token="")

    @app.api_route("/hello", methods=["GET", "POST"])
    async def hello() -> dict[str, str]:
        return {"hello": "there"}

    async with DaprTest(app):
        answer, body = await asgi_request(app, method, path, {"host": "127.0.0.1:8000", **headers})
    assert answer == status, body
    if answer >= 400:
        assert "errorCode" in json.loads(body)
    assert tracebacks(caplog) == []
