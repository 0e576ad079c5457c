"""Service invocation over the network (reference 6.2-6.5): HTTPEndpoint resources, URLs and other
app ids, through a real upstream server on loopback, with the HTTP API and with `Dapr.invoke`."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from fastapi_dapr import Dapr, DaprAPIError, InvocationSettings
from fastapi_dapr.testing import DaprTest

from ..certs import CertificateAuthority
from ..processes import communicate
from ..servers import serve


class Upstream:
    """A FastAPI app standing for the service being invoked; it records what it received."""

    def __init__(self) -> None:
        self.app = FastAPI()
        self.seen: list[dict[str, Any]] = []
        self.release_sse = asyncio.Event()
        self.closing = asyncio.Event()
        self.sse_stopped = asyncio.Event()
        self.ndjson_stopped = asyncio.Event()
        self.uploaded: list[int] = []
        app = self.app

        @app.get("/sse")
        async def sse() -> StreamingResponse:
            async def events() -> AsyncIterator[bytes]:
                yield b"data: first\n\n"
                await self.release_sse.wait()  # the test reads the first event before this
                yield b"data: second\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        @app.get("/sse-forever")
        async def sse_forever() -> StreamingResponse:
            async def events() -> AsyncIterator[bytes]:
                try:
                    yield b"data: only\n\n"
                    await self.closing.wait()
                finally:
                    self.sse_stopped.set()

            return StreamingResponse(events(), media_type="text/event-stream")

        @app.get("/ndjson-forever")
        async def ndjson_forever() -> StreamingResponse:
            async def lines() -> AsyncIterator[bytes]:
                try:
                    yield b'{"n": 1}\n'
                    await self.closing.wait()
                finally:
                    self.ndjson_stopped.set()

            return StreamingResponse(lines(), media_type="application/x-ndjson")

        @app.put("/upload")
        async def upload(request: Request) -> dict[str, int]:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
            self.uploaded.append(size)
            return {"size": size}

        @app.get("/download/{size}")
        async def download(size: int) -> StreamingResponse:
            async def chunks() -> AsyncIterator[bytes]:
                block = b"x" * 65536
                for _ in range(size // len(block)):
                    yield block

            return StreamingResponse(chunks(), media_type="application/octet-stream")

        @app.get("/never")
        async def never() -> None:
            await self.closing.wait()  # no answer until the test ends

        @app.get("/status/{code}")
        async def status(code: int) -> Response:
            return Response(b"upstream says no", status_code=code, headers={"x-upstream": "yes"})

        @app.get("/redirect")
        async def redirect(to: str) -> RedirectResponse:
            return RedirectResponse(to, status_code=302)

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
        async def echo(path: str, request: Request) -> Response:
            body = await request.body()
            self.seen.append(
                {
                    "method": request.method,
                    "path": request.url.path,
                    "query": request.url.query,
                    "headers": dict(request.headers),
                    "body": body,
                    "client_port": request.client.port if request.client else None,
                }
            )
            return Response(
                json.dumps({"path": path, "size": len(body)}),
                media_type="application/json",
                headers={"x-echo": "1", "connection": "x-private", "x-private": "hop"},
            )


def endpoint_yaml(name: str, base_url: str, extra: str = "") -> str:
    return (
        f"apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {{name: {name}}}\n"
        f"spec:\n  baseUrl: {base_url}\n{extra}---\n"
    )


def indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.strip().splitlines())


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    server = Upstream()
    async with serve(server.app) as url:
        yield server, url
        server.closing.set()


def make_app(tmp_path: Path, resources: str = "", **options: Any) -> tuple[FastAPI, Dapr]:
    app = FastAPI()
    if resources:
        (tmp_path / "resources").mkdir(exist_ok=True)
        (tmp_path / "resources" / "endpoints.yaml").write_text(resources)
        options["resources_path"] = tmp_path / "resources"
    dapr = Dapr(app, app_id=options.pop("app_id", "orders"), **options)

    @app.get("/ping")
    async def ping() -> str:
        return "pong from orders"

    return app, dapr


def encoded(url: str) -> str:
    return quote(url, safe="")


async def test_precedence_resource_url_and_app_ids(tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    server, url = upstream
    other = Upstream()
    async with serve(other.app) as other_url:
        # A resource named like an app id wins over the app table, and over this app's own id.
        resources = endpoint_yaml("billing", url + "/from-resource") + endpoint_yaml("orders", url + "/self")
        app, _ = make_app(
            tmp_path,
            resources,
            invocation=InvocationSettings(apps={"billing": other_url, "stock": other_url}),
        )
        async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
            assert (await client.get("/v1.0/invoke/billing/method/x")).json()["path"] == "from-resource/x"
            assert (await client.get("/v1.0/invoke/orders/method/ping")).json()["path"] == "self/ping"
            assert (await client.get("/v1.0/invoke/stock/method/y")).json()["path"] == "y"
            assert (await client.get("/v1.0/invoke/stock.default/method/y")).json()["path"] == "y"
            unknown = await client.get("/v1.0/invoke/nobody/method/x")
    assert unknown.status_code == 500
    assert unknown.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "couldn't find service: nobody" in unknown.json()["message"]
    # Between apps, Dapr's caller and callee headers; never a token.
    stock_call = other.seen[0]["headers"]
    assert (stock_call["dapr-caller-app-id"], stock_call["dapr-callee-app-id"]) == ("orders", "stock")
    assert "dapr-caller-app-id" not in server.seen[0]["headers"]  # not for HTTPEndpoints


@pytest.mark.parametrize("verb", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_every_method_query_and_body(tmp_path: Path, upstream: tuple[Upstream, str], verb: str) -> None:
    server, url = upstream
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url + "/api"))
    async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
        answer = await client.request(
            verb, "/v1.0/invoke/svc/method/items/a%20b?x=1&y=%2F", content=b"" if verb == "GET" else b"body"
        )
    assert answer.status_code == 200
    (seen,) = server.seen
    assert (seen["method"], seen["path"], seen["query"]) == (verb, "/api/items/a b", "x=1&y=%2F")
    assert seen["body"] == (b"" if verb == "GET" else b"body")
    assert answer.headers["x-echo"] == "1"


async def test_upstream_status_and_body_pass_through(tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url))
    async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
        answer = await client.get("/v1.0/invoke/svc/method/status/404")
        head = await client.head("/v1.0/invoke/svc/method/anything")
    assert (answer.status_code, answer.content, answer.headers["x-upstream"]) == (
        404,
        b"upstream says no",
        "yes",
    )
    assert head.status_code == 200
    assert head.content == b""


async def test_headers(
    tmp_path: Path, upstream: tuple[Upstream, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = upstream
    monkeypatch.setenv("APP_API_TOKEN", "app-secret")
    resources = endpoint_yaml(
        "svc", url, indent("headers:\n- name: X-Tenant\n  value: from-resource", 2) + "\n"
    )
    app, _ = make_app(tmp_path, resources, api_token="caller-secret")
    async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
        answer = await client.get(
            "/v1.0/invoke/svc/method/h",
            headers={
                "dapr-api-token": "caller-secret",
                "x-tenant": "from-caller",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "connection": "x-hop",
                "x-hop": "gone",
                "authorization": "Bearer for-the-upstream",
                "dapr-caller-app-id": "spoofed",
            },
        )
    headers = server.seen[0]["headers"]
    assert headers["x-tenant"] == "from-resource"  # resource headers override
    assert headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers["authorization"] == "Bearer for-the-upstream"
    assert "x-hop" not in headers
    assert "dapr-caller-app-id" not in headers
    # Neither the caller's token nor APP_API_TOKEN leaves this app (daprd leaks the latter).
    assert "dapr-api-token" not in headers
    # The upstream's own hop-by-hop headers are not passed back.
    assert "x-private" not in answer.headers
    assert answer.headers["x-echo"] == "1"


async def test_url_targets_need_the_allow_list(tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    server, url = upstream
    port = url.rsplit(":", 1)[1]
    refused_app, _ = make_app(tmp_path)
    async with DaprTest(refused_app), serve(refused_app) as app_url, httpx.AsyncClient(base_url=app_url) as c:
        answer = await c.get(f"/v1.0/invoke/{encoded(url)}/method/x")
    assert answer.status_code == 403
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "allowed_urls" in answer.json()["message"]

    # Allowed by host, but a loopback address needs its own opt-in: checked on the literal
    # address, and on what a name resolves to.
    settings = InvocationSettings(allowed_urls=["127.0.0.1", "localhost", "169.254.169.254"])
    app, _ = make_app(tmp_path, invocation=settings)
    async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as c:
        literal = await c.get(f"/v1.0/invoke/{encoded(url)}/method/x")
        named = await c.get(f"/v1.0/invoke/http://localhost:{port}/method/x")
        metadata = await c.get("/v1.0/invoke/http://169.254.169.254/method/latest/meta-data")
    for answer in (literal, named, metadata):
        assert answer.status_code == 403, answer.text
    assert "loopback" in literal.json()["message"]
    assert "localhost resolves to" in named.json()["message"]
    assert "is a loopback address" in named.json()["message"]
    assert "link-local" in metadata.json()["message"]
    assert server.seen == []

    settings = InvocationSettings(
        allowed_urls=[f"http://localhost:{port}/api/"], allow_private_addresses=True
    )
    app, _ = make_app(tmp_path, invocation=settings)
    async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as c:
        plain = await c.get(f"/v1.0/invoke/http://localhost:{port}/api/method/a?q=1")
        escaped = await c.get(f"/v1.0/invoke/{encoded(f'http://localhost:{port}/api')}/method/b")
        outside = await c.get(f"/v1.0/invoke/http://localhost:{port}/apix/method/a")
        traversal = await c.get(f"/v1.0/invoke/http://localhost:{port}/api/method/..%2F..%2Fadmin")
        other_port = await c.get("/v1.0/invoke/http://localhost:1/api/method/a")
        # The target's own path is checked too: no dot segments however encoded, none with
        # `;` parameters (read as `..` by Tomcat), no encoded `/` or `\`, no `\`.
        dotted = [
            await c.get(f"/v1.0/invoke/{encoded(f'http://localhost:{port}/api/{dots}/admin')}/method/x")
            for dots in (
                *("..", "%2e%2e", "%2E.", "..;", ".;", "..;x=1", "%2e%2E%3b", "..%2Fadmin", "x%5c.."),
                *(
                    "%252e%252e",
                    "%25252e.",
                    "..%00",
                    "%EF%BC%8E%EF%BC%8E",
                    "a%252Fb",
                ),  # twice encoded, NUL, full width
            )
        ]
        with_backslash = encoded(f"http://localhost:{port}/api/a" + chr(92))
        backslash = await c.get(f"/v1.0/invoke/{with_backslash}/method/x")
        # Prefixes are matched on the normalised path: an escaped unreserved character is itself.
        normalised = await c.get(f"/v1.0/invoke/{encoded(f'http://localhost:{port}/%61pi')}/method/n")
    assert plain.json()["path"] == "api/a"
    assert escaped.json()["path"] == "api/b"
    assert server.seen[0]["query"] == "q=1"
    assert outside.status_code == 403
    assert other_port.status_code == 403
    assert [answer.status_code for answer in dotted] == [400] * 14
    assert {answer.json()["errorCode"] for answer in dotted} == {"ERR_DIRECT_INVOKE"}
    assert backslash.status_code == 400
    assert normalised.status_code == 200
    assert normalised.json()["path"] == "api/n"
    # The method is cleaned before the check, and the cleaned one is sent: it stays below /api.
    assert traversal.json()["path"] == "api/admin"


async def test_redirects(tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    _server, url = upstream
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url))
    async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
        followed = await client.get("/v1.0/invoke/svc/method/redirect", params={"to": "/landed"})
        refused = await client.get(
            "/v1.0/invoke/svc/method/redirect", params={"to": "http://169.254.169.254/latest/meta-data"}
        )
    # Within the endpoint, followed as daprd's HTTPEndpoint channels do; elsewhere, the URL rules.
    assert followed.json()["path"] == "landed"
    assert refused.status_code == 403
    assert "redirect to http://169.254.169.254/latest/meta-data refused" in refused.json()["message"]

    settings = InvocationSettings(allowed_urls=["127.0.0.1"], allow_private_addresses=True)
    app, _ = make_app(tmp_path, invocation=settings)
    async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
        answer = await client.get(f"/v1.0/invoke/{encoded(url)}/method/redirect", params={"to": "/x"})
    assert answer.status_code == 302  # URL targets get the redirect back, as from daprd


async def test_server_sent_events_arrive_one_by_one(tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    server, url = upstream
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url))
    async with (
        DaprTest(app),
        serve(app) as app_url,
        httpx.AsyncClient(base_url=app_url) as client,
        client.stream(
            "GET", "/v1.0/invoke/svc/method/sse", headers={"accept": "text/event-stream"}
        ) as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = answer.aiter_lines()
        # The upstream has not finished: it waits for this test to read the first event.
        assert await anext(lines) == "data: first"
        assert await anext(lines) == ""
        server.release_sse.set()
        assert [line async for line in lines] == ["data: second", ""]


async def test_a_caller_leaving_an_event_stream_stops_the_upstream(
    tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    server, url = upstream
    accept = indent("headers:\n- name: Accept\n  value: text/event-stream", 2) + "\n"
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url, accept))  # SSE asked for by the resource
    async with DaprTest(app), serve(app) as app_url:
        async with (
            httpx.AsyncClient(base_url=app_url) as client,
            client.stream("GET", "/v1.0/invoke/svc/method/sse-forever") as answer,
        ):
            assert await anext(answer.aiter_lines()) == "data: only"
        # The caller hung up while the upstream had nothing more to send: the proxy noticed.
        await asyncio.wait_for(server.sse_stopped.wait(), 10)


async def test_a_caller_leaving_any_endless_answer_stops_the_upstream(
    tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    server, url = upstream
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url))
    async with DaprTest(app), serve(app) as app_url:
        async with (
            httpx.AsyncClient(base_url=app_url) as client,
            client.stream("GET", "/v1.0/invoke/svc/method/ndjson-forever") as answer,
        ):
            assert await anext(answer.aiter_lines()) == '{"n": 1}'
        await asyncio.wait_for(server.ndjson_stopped.wait(), 10)


DEFAULT_RETRY = (
    "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: everywhere}\n"
    "spec:\n  policies:\n    retries:\n      DefaultRetryPolicy: {policy: constant, maxRetries: 2}\n---\n"
)


@pytest.mark.parametrize("path", ["sse-forever", "ndjson-forever"])
async def test_a_caller_leaving_an_endless_answer_stops_the_upstream_under_a_policy_too(
    tmp_path: Path, upstream: tuple[Upstream, str], path: str
) -> None:
    server, url = upstream
    accept = indent("headers:\n- name: Accept\n  value: text/event-stream", 2) + "\n"
    extra = accept if path.startswith("sse") else ""
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url, extra) + DEFAULT_RETRY)
    async with DaprTest(app), serve(app) as app_url:
        async with (
            httpx.AsyncClient(base_url=app_url) as client,
            client.stream("GET", f"/v1.0/invoke/svc/method/{path}") as answer,
        ):
            assert answer.status_code == 200
            first = await anext(answer.aiter_lines())
            assert first in ("data: only", '{"n": 1}')
        stopped = server.sse_stopped if path.startswith("sse") else server.ndjson_stopped
        await asyncio.wait_for(stopped.wait(), 10)


async def test_body_limit_is_counted_while_streaming(tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    server, url = upstream
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url), max_body_size=100_000)

    async def chunked(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // 10_000):
            yield b"y" * 10_000

    async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
        declared = await client.put("/v1.0/invoke/svc/method/upload", content=b"z" * 100_001)
        streamed = await client.put("/v1.0/invoke/svc/method/upload", content=chunked(200_000))
        fits = await client.put("/v1.0/invoke/svc/method/upload", content=chunked(100_000))
        huge_headers = await client.get("/v1.0/invoke/svc/method/x", headers={"x-big": "h" * 20_000})
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert streamed.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert fits.json() == {"size": 100_000}
    assert server.uploaded == [100_000]  # the cut body never reached the upstream as a whole one
    assert huge_headers.status_code == 431


async def test_transport_errors(tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    closed = serve(FastAPI())
    async with closed as closed_url:
        pass  # the port is free again: nothing listens there
    resources = endpoint_yaml("down", closed_url) + endpoint_yaml("svc", url)
    app, dapr = make_app(tmp_path, resources, invocation=InvocationSettings(timeout=0.5))
    async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
        refused = await client.get("/v1.0/invoke/down/method/x")
        slow = await client.get("/v1.0/invoke/svc/method/never")
        with pytest.raises(DaprAPIError) as info:
            await dapr.invoke("svc", "never", timeout=0.2)
    assert refused.status_code == 500
    assert refused.json()["message"].startswith(
        "failed to invoke, id: down, err: could not connect to 127.0.0.1"
    )
    assert slow.status_code == 500
    assert slow.json()["message"].endswith("within 0.5s")
    assert info.value.status_code == 500
    assert info.value.error_code == "ERR_DIRECT_INVOKE"


async def test_connections_are_pooled_and_closed_on_shutdown(
    tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    server, url = upstream
    app, dapr = make_app(tmp_path, endpoint_yaml("svc", url))
    async with DaprTest(app):
        for _ in range(3):
            assert (await dapr.invoke("svc", "x")).status_code == 200
        runtime = dapr.backend.running()
        connections = [c for pool in runtime.upstreams()._pools.values() for c in pool._idle]
        assert len(connections) == 1
        assert connections[0].transport is not None
        assert not connections[0].transport.is_closing()
    assert len({seen["client_port"] for seen in server.seen}) == 1  # one connection, reused
    assert connections[0].transport.is_closing()  # closed when the app stopped


def tls_files(
    tmp_path: Path, ca: CertificateAuthority, *, client_ca: CertificateAuthority | None = None
) -> dict[str, Any]:
    pair = ca.issue("localhost", server=True)
    (tmp_path / "server.pem").write_text(pair.certificate)
    (tmp_path / "server.key").write_text(pair.private_key)
    options: dict[str, Any] = {
        "ssl_certfile": str(tmp_path / "server.pem"),
        "ssl_keyfile": str(tmp_path / "server.key"),
    }
    if client_ca is not None:
        (tmp_path / "client-ca.pem").write_text(client_ca.pem)
        options.update(ssl_ca_certs=str(tmp_path / "client-ca.pem"), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


async def test_https_with_the_endpoints_own_ca(tmp_path: Path) -> None:
    ca, stranger = CertificateAuthority(), CertificateAuthority("another CA")
    server = Upstream()
    async with serve(server.app, **tls_files(tmp_path, ca)) as url:
        resources = (
            endpoint_yaml(
                "trusting", url, indent(f"clientTLS:\n  rootCA:\n    value: |\n{indent(ca.pem, 6)}", 2) + "\n"
            )
            + endpoint_yaml(
                "wrong-ca",
                url,
                indent(f"clientTLS:\n  rootCA:\n    value: |\n{indent(stranger.pem, 6)}", 2) + "\n",
            )
            + endpoint_yaml("system-trust", url)
        )
        app, _ = make_app(tmp_path, resources)
        async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
            good = await client.get("/v1.0/invoke/trusting/method/secure")
            wrong = await client.get("/v1.0/invoke/wrong-ca/method/secure")
            system = await client.get("/v1.0/invoke/system-trust/method/secure")
    assert good.json()["path"] == "secure"
    for refused in (wrong, system):
        assert refused.status_code == 500
        assert refused.json()["errorCode"] == "ERR_DIRECT_INVOKE"
        assert "certificate" in refused.json()["message"]
    assert len(server.seen) == 1


async def test_mutual_tls_with_a_key_from_a_secret_store(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    client_pair = ca.issue("orders", server=False)
    (tmp_path / "secrets.json").write_text(
        json.dumps({"tls": {"crt": client_pair.certificate, "key": client_pair.private_key}})
    )
    store = (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: files}\nspec:\n"
        "  type: secretstores.local.file\n  version: v1\n  metadata:\n"
        f"  - name: secretsFile\n    value: {tmp_path / 'secrets.json'}\n"
        "  - name: nestedSeparator\n    value: ':'\n---\n"
    )
    root = indent(f"rootCA:\n  value: |\n{indent(ca.pem, 4)}", 4)
    mutual = (
        f"  clientTLS:\n{root}\n    certificate:\n      secretKeyRef: {{name: 'tls:crt', key: 'tls:crt'}}\n"
        "    privateKey:\n      secretKeyRef: {name: 'tls:key', key: 'tls:key'}\n"
        "auth:\n  secretStore: files\n"
    )
    server = Upstream()
    async with serve(server.app, **tls_files(tmp_path, ca, client_ca=ca)) as url:
        resources = (
            store
            + endpoint_yaml("mutual", url, mutual)
            + endpoint_yaml("no-client-cert", url, f"  clientTLS:\n{root}\n")
        )
        app, dapr = make_app(tmp_path, resources)
        async with DaprTest(app), serve(app) as app_url, httpx.AsyncClient(base_url=app_url) as client:
            good = await client.get("/v1.0/invoke/mutual/method/who")
            refused = await client.get("/v1.0/invoke/no-client-cert/method/who")
            assert (await dapr.invoke("mutual", "again")).status_code == 200
            shown = repr(dapr.backend.running().http_endpoints["mutual"])
    assert good.json()["path"] == "who"
    assert refused.status_code == 500
    assert refused.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert [seen["path"] for seen in server.seen] == ["/who", "/again"]
    assert client_pair.private_key not in shown  # the resolved key is never printed


SDK_CALL = """
import json, sys
from dapr.conf import settings
settings.DAPR_HTTP_ENDPOINT = sys.argv[1]
settings.DAPR_API_METHOD_INVOCATION_PROTOCOL = "http"
from dapr.clients import DaprClient
with DaprClient() as client:
    response = client.invoke_method(
        "svc", "items/9", data=b'{"a": 1}', http_verb="POST", content_type="application/json"
    )
    print(json.dumps([response.json(), response.status_code]))
"""


@pytest.mark.process
async def test_official_dapr_sdk_invokes_an_http_endpoint(
    tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    server, url = upstream
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url))
    async with DaprTest(app), serve(app) as app_url:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SDK_CALL, app_url, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await communicate(process, 60)
    assert process.returncode == 0
    assert json.loads(out) == [{"path": "items/9", "size": 8}, 200]
    assert server.seen[0]["headers"]["content-type"] == "application/json"


async def test_client_api(tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    server, url = upstream
    app, dapr = make_app(tmp_path, endpoint_yaml("svc", url))

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"p" * 1000

    async with DaprTest(app):
        answer = await dapr.invoke(
            "svc", "items/1", http_method="POST", json={"a": 1}, params={"q": "v w"}, headers={"x-a": "b"}
        )
        not_found = await dapr.invoke("svc", "status/404")
        uploaded = await dapr.invoke("svc", "upload", http_method="PUT", content=parts())
        async with await dapr.invoke("svc", "download/262144", stream=True) as download:
            sizes = [len(chunk) async for chunk in download.aiter_bytes()]
        self_call = await dapr.invoke("orders", "ping")
    assert answer.status_code == 200
    assert answer.json() == {"path": "items/1", "size": 7}
    assert answer.headers["x-echo"] == "1"
    seen = server.seen[0]
    assert (seen["query"], seen["headers"]["x-a"], seen["headers"]["content-type"]) == (
        "q=v+w",
        "b",
        "application/json",
    )
    assert (not_found.status_code, not_found.content) == (404, b"upstream says no")
    assert uploaded.json() == {"size": 4000}
    assert sum(sizes) == 262144
    assert self_call.json() == "pong from orders"


async def test_client_api_in_remote_mode_goes_through_daprd() -> None:
    fake_daprd = Upstream()
    async with serve(fake_daprd.app) as daprd_url:
        app = FastAPI()
        dapr = Dapr(
            app, app_id="orders", mode="remote", dapr_http_endpoint=daprd_url, api_token="sidecar-token"
        )
        async with app.router.lifespan_context(app):
            answer = await dapr.invoke("http://example.com/api", "items/1", http_method="POST", content=b"x")
            session = dapr.backend._http()  # the one client of daprd, closed with the lifespan
        assert session.is_closed
    assert answer.status_code == 200
    seen = fake_daprd.seen[0]
    assert seen["path"] == "/v1.0/invoke/http://example.com/api/method/items/1"
    assert seen["headers"]["dapr-api-token"] == "sidecar-token"


async def test_large_bodies_stream_with_flat_memory(tmp_path: Path, upstream: tuple[Upstream, str]) -> None:
    import tracemalloc

    _server, url = upstream
    size = 200 * 1024 * 1024
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url), max_body_size=size)

    async def upload() -> AsyncIterator[bytes]:
        block = b"u" * 65536
        for _ in range(size // len(block)):
            yield block

    async with (
        DaprTest(app),
        serve(app) as app_url,
        httpx.AsyncClient(base_url=app_url, timeout=120) as client,
    ):
        tracemalloc.start()
        try:
            sent = await client.put("/v1.0/invoke/svc/method/upload", content=upload())
            received = 0
            async with client.stream("GET", f"/v1.0/invoke/svc/method/download/{size}") as answer:
                async for chunk in answer.aiter_raw():
                    received += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert sent.json() == {"size": size}
    assert received == size
    # Client, proxy and upstream all in this process: everything they held at once.
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for 2 x 200 MiB streamed"


async def test_callers_without_the_token_or_from_elsewhere_are_refused(
    tmp_path: Path, upstream: tuple[Upstream, str]
) -> None:
    server, url = upstream
    app, _ = make_app(tmp_path, endpoint_yaml("svc", url))
    remote = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with DaprTest(app), httpx.AsyncClient(transport=remote, base_url="http://127.0.0.1") as client:
        from_elsewhere = await client.get("/v1.0/invoke/svc/method/x")
        proxied = await client.get("/v1.0/invoke/svc/method/x", headers={"x-forwarded-for": "127.0.0.1"})
    assert from_elsewhere.status_code == 403
    assert "DAPR_API_TOKEN" in from_elsewhere.json()["message"]
    assert proxied.status_code == 403

    app, _ = make_app(tmp_path, endpoint_yaml("svc", url), api_token="s3cret")
    remote = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with DaprTest(app), httpx.AsyncClient(transport=remote, base_url="http://127.0.0.1") as client:
        without = await client.get("/v1.0/invoke/svc/method/x")
        wrong = await client.get("/v1.0/invoke/svc/method/x", headers={"dapr-api-token": "s3cre"})
        # daprd once let any path containing /healthz through: only the exact paths skip the token.
        sneaky = await client.get("/v1.0/invoke/svc/method/v1.0/healthz")
        right = await client.get("/v1.0/invoke/svc/method/x", headers={"dapr-api-token": "s3cret"})
    assert (without.status_code, without.text) == (401, "invalid api token\n")
    assert wrong.status_code == 401
    assert sneaky.status_code == 401
    assert right.status_code == 200
    assert [seen["path"] for seen in server.seen] == ["/x"]
    assert "dapr-api-token" not in server.seen[0]["headers"]
