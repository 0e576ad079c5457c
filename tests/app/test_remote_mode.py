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
        await dapr._remote_sidecar().close()
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
        await dapr._remote_sidecar().close()
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
    await dapr._remote_sidecar().close()
    assert info.value.status_code == 500
    assert info.value.error_code == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert "could not be reached" in info.value.message


@pytest.mark.process
def test_remote_mode_never_loads_the_sidecar_side() -> None:
    code = """
import asyncio, os, sys
os.environ["DAPR_HTTP_PORT"] = "3500"
import httpx
from fastapi import FastAPI
from fastapi_dapr import Dapr, CloudEvent
app = FastAPI()
dapr = Dapr(app)
@dapr.subscribe("pubsub", "t", match='event.type == "x"')
async def h(event: CloudEvent) -> None: ...
async def main() -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/dapr/subscribe")).status_code == 200
asyncio.run(main())
loaded = [m for m in sys.modules if m.startswith("fastapi_dapr.") and m.split(".")[1] in
          ("brokers", "_runtime", "_delivery", "_sidecar", "_envelope", "_resources", "_cel")]
print(loaded)
"""
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
