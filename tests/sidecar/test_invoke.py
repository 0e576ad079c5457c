"""Service invocation of the app's own id (reference 6.1-6.3): target and method read as daprd
reads them, and the request served in process, streaming, by the app's route."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from fastapi_dapr import Dapr
from fastapi_dapr._call import InvalidMethod, normalize_method
from fastapi_dapr.sidecar.invocation import find_target
from fastapi_dapr.testing import DaprTestClient

from ..processes import communicate
from ..servers import serve


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/v1.0/invoke/orders/method/list", {}, ("orders", "list", False)),
        ("/v1.0/invoke/orders/method/a/b/../c", {}, ("orders", "a/c", False)),
        ("//v1.0//invoke/orders/method/x", {}, ("orders", "x", False)),  # repeated slashes
        ("/v1.0/invoke/http://localhost:8080/method/hello", {}, ("http://localhost:8080", "hello", False)),
        ("/v1.0/invoke/http%3A%2F%2Fhost/method/hi", {}, ("http://host", "hi", False)),
        ("/v1.0/invoke/with+space/method/m", {}, ("with space", "m", False)),
        ("/v1.0/invoke/orders/method/", {}, ("orders", "", False)),
        ("/v1.0/invoke/orders", {}, None),
        ("/v1.0/publish/orders/method/x", {}, None),
        # the header wins, even over an /invoke/ path: the method is the whole path
        ("/v1.0/invoke/x/method/y", {"dapr-app-id": "orders"}, ("orders", "v1.0/invoke/x/method/y", True)),
        (
            "/v1.0/anything",
            {"authorization": "Basic " + base64.b64encode(b"dapr-app-id:orders").decode()},
            ("orders", "v1.0/anything", False),
        ),
    ],
)
def test_target_and_method(path: str, headers: dict[str, str], expected: Any) -> None:
    assert find_target(path, headers) == expected


@pytest.mark.parametrize(
    ("method", "normal"),
    [
        ("list", "list"),
        ("admin/../public", "public"),
        ("../../etc/passwd", "etc/passwd"),
        (".", ""),
        ("..", ""),
        ("a//b/", "a/b"),
    ],
)
def test_method_normalisation(method: str, normal: str) -> None:
    assert normalize_method(method) == normal


@pytest.mark.parametrize("method", ["a#b", "a?b", "a\x00b", "a\nb", "a\x7fb"])
def test_methods_with_forbidden_characters(method: str) -> None:
    with pytest.raises(InvalidMethod):
        normalize_method(method)


def invoked_app(**dapr_options: Any) -> tuple[FastAPI, list[dict[str, Any]]]:
    app = FastAPI()
    Dapr(app, app_id="orders", **dapr_options)
    seen: list[dict[str, Any]] = []

    @app.api_route("/items/{item}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def item(item: str, request: Request) -> dict[str, Any]:
        body = await request.body()
        seen.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": dict(request.headers),
                "tokens": request.headers.getlist("dapr-api-token"),
                "body": body,
            }
        )
        return {"item": item, "size": len(body)}

    @app.get("/public")
    async def public() -> str:
        return "public"

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for n in range(3):
                yield f"data: {n}\n\n".encode()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app, seen


@pytest.mark.parametrize("verb", ["GET", "POST", "PUT", "DELETE", "PATCH"])
def test_every_method_reaches_the_route_with_query_and_body(verb: str) -> None:
    app, seen = invoked_app()
    with DaprTestClient(app) as client:
        answer = client.request(
            verb,
            "/v1.0/invoke/orders/method/items/7?a=1&b=%20x",
            content=b"payload" if verb != "GET" else b"",
        )
    assert answer.status_code == 200
    assert answer.json()["item"] == "7"
    (request,) = seen
    assert (request["method"], request["path"], request["query"]) == (verb, "/items/7", "a=1&b=%20x")


def test_headers_forwarded_as_daprd_does() -> None:
    app, seen = invoked_app(api_token="t0k", app_api_token="app-t0k")
    with DaprTestClient(app) as client:
        client.post(
            "/v1.0/invoke/orders/method/items/1",
            content=b"x",
            headers={
                "dapr-api-token": "t0k",
                "x-custom": "kept",
                "connection": "close, x-hop",
                "x-hop": "gone",
                "keep-alive": "timeout=5",
                "dapr-caller-app-id": "spoofed",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        )
    headers = seen[0]["headers"]
    assert headers["x-custom"] == "kept"
    assert headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert "x-hop" not in headers
    assert "keep-alive" not in headers
    # The caller's API token stays with the sidecar; the app gets its own token.
    assert headers["dapr-api-token"] == "app-t0k"
    assert headers["dapr-caller-app-id"] == headers["dapr-callee-app-id"] == "orders"


@pytest.mark.parametrize(
    ("api_token", "app_api_token", "expected"),
    [
        (None, "app-t0k", ["app-t0k"]),  # daprd sets (replaces) it: the app never sees two
        ("t0k", "app-t0k", ["app-t0k"]),
        ("t0k", None, []),  # daprd's API middleware removes the caller's token
        (None, None, ["t0k"]),  # no token configured: daprd passes the caller's on
    ],
)
def test_the_app_sees_one_token_as_daprd_sends_it(
    api_token: str | None, app_api_token: str | None, expected: list[str]
) -> None:
    app, seen = invoked_app(api_token=api_token, app_api_token=app_api_token)
    with DaprTestClient(app) as client:
        answer = client.post(
            "/v1.0/invoke/orders/method/items/1",
            content=b"x",
            headers={"dapr-api-token": "t0k", "expect": "100-continue"},
        )
    assert answer.status_code == 200
    assert seen[0]["tokens"] == expected
    assert "expect" not in seen[0]["headers"]  # hop-by-hop in effect, as on the network path


def test_the_own_id_with_the_own_namespace_is_this_app() -> None:
    # daprd splits `{id}.{namespace}` and invokes locally when both are its own.
    app, seen = invoked_app()
    with DaprTestClient(app) as client:
        answer = client.get("/v1.0/invoke/orders.default/method/items/1")
        assert (answer.status_code, answer.json()["item"]) == (200, "1")
        answer = client.get("/items/2", headers={"dapr-app-id": "orders.default"})
        assert (answer.status_code, answer.json()["item"]) == (200, "2")
        elsewhere = client.get("/v1.0/invoke/orders.other/method/items/3")  # another namespace
        assert elsewhere.status_code == 500
        assert "couldn't find service" in elsewhere.json()["message"]
    assert [request["path"] for request in seen] == ["/items/1", "/items/2"]


async def test_the_client_api_invokes_the_own_id_with_the_own_namespace() -> None:
    from fastapi_dapr.testing import DaprTest

    app, seen = invoked_app()
    dapr: Dapr = app.state.fastapi_dapr
    async with DaprTest(app):
        answer = await dapr.invoke("orders.default", "items/4")
    assert (answer.status_code, answer.json()["item"]) == (200, "4")
    assert seen[0]["headers"]["dapr-callee-app-id"] == "orders"


def test_path_traversal_stays_inside_the_app() -> None:
    app, _ = invoked_app()
    with DaprTestClient(app) as client:
        answer = client.get("/v1.0/invoke/orders/method/items%2F..%2F..%2Fpublic")
    assert answer.json() == "public"


def test_invocation_errors() -> None:
    app, seen = invoked_app(max_body_size=10)
    with DaprTestClient(app) as client:
        answer = client.get("/v1.0/invoke/orders/method/a%23b")
        assert answer.status_code == 500
        assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
        assert client.post("/v1.0/invoke/orders/method/items/1", content=b"x" * 11).status_code == 413
        answer = client.get("/v1.0/invoke/billing/method/x")  # an unknown app id: daprd's error
        assert answer.status_code == 500
        assert answer.json()["message"].startswith(
            "failed to invoke, id: billing, err: couldn't find service"
        )
        assert client.get("/v1.0/invoke").json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert seen == []


def test_a_streamed_body_over_the_limit_is_daprds_413() -> None:
    app, seen = invoked_app(max_body_size=10)

    def chunks() -> Iterator[bytes]:
        yield b"x" * 6
        yield b"x" * 6  # no content-length: found past the limit while it streams

    with DaprTestClient(app) as client:
        answer = client.post("/v1.0/invoke/orders/method/items/1", content=chunks())
    assert answer.status_code == 413
    assert answer.json() == {
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": "the request body is larger than the limit of 10 bytes",
    }
    assert seen == []


def test_streamed_answers_pass_through() -> None:
    app, _ = invoked_app()
    with DaprTestClient(app) as client, client.stream("GET", "/v1.0/invoke/orders/method/stream") as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert list(answer.iter_lines()) == ["data: 0", "", "data: 1", "", "data: 2", ""]


SDK_CALL = """
import json, sys
from dapr.conf import settings
settings.DAPR_HTTP_ENDPOINT = sys.argv[1]
settings.DAPR_API_METHOD_INVOCATION_PROTOCOL = "http"
from dapr.clients import DaprClient
with DaprClient() as client:
    response = client.invoke_method(
        "orders", "items/9", data=b'{"a": 1}', http_verb="POST", content_type="application/json"
    )
    print(json.dumps([response.json(), response.status_code]))
"""


@pytest.mark.process
async def test_official_dapr_sdk_invokes_through_the_app() -> None:
    # The official SDK's HTTP invocation client, in a process of its own (it leaves
    # its event loop open, which would otherwise surface as a later test's warning).
    from fastapi_dapr.testing import DaprTest

    app, seen = invoked_app()
    async with DaprTest(app), serve(app) as url:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SDK_CALL, url, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await communicate(process, 60)
    assert process.returncode == 0
    assert json.loads(out) == [{"item": "9", "size": 8}, 200]
    assert seen[0]["path"] == "/items/9"
