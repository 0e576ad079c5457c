"""The sidecar API's surface: headers it cannot read, daprd's routes of the building blocks
it does not serve (each answers daprd's own "not configured" error), `PUT /v1.0/metadata/{key}`
and `POST /v1.0/shutdown`, embedded and standalone, and the official SDKs' clients on them."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dapr import Dapr
from fastapi_dapr.testing import DaprTest, DaprTestClient

from ..processes import communicate
from ..servers import serve
from .test_standalone import JS, App, Sidecar, environment, node_env, node_modules, running

__all__ = ["node_modules"]  # the fixture, used here

NO_APP_ID = {
    "errorCode": "ERR_DIRECT_INVOKE",
    "message": "failed getting app id either from the URL path or the header dapr-app-id",
}


def embedded(**options: Any) -> DaprTestClient:
    """A test client of an app whose embedded sidecar is the one tested (start it with `with`)."""
    app = FastAPI()
    Dapr(app, app_id="app1", **{"api_token": "", **options})
    return DaprTestClient(app)


@pytest.fixture
def client() -> Iterator[DaprTestClient]:
    with embedded() as client:
        yield client


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
    from fastapi_dapr.sidecar.metrics import Metrics
    from fastapi_dapr.sidecar.standalone import MetricsEndpoint

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
        ("PUT", "/v1.0/metadata/key", {"content-length": "³"}, 204),
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


# -- the building blocks not served: daprd's "not configured" errors --------------------------

# Every route daprd's HTTP API has for them (pkg/api/http), with the status and errorCode daprd
# answers when no component of that kind is loaded (pkg/api/errors, pkg/messages).
STATE = (500, "ERR_STATE_STORE_NOT_CONFIGURED")
NO_PLACEMENT = (400, "ERR_ACTOR_NO_PLACEMENT")
CONFIGURATION = (500, "ERR_CONFIGURATION_STORE_NOT_CONFIGURED")
LOCK = (500, "ERR_LOCK_STORE_NOT_CONFIGURED")
CRYPTO = (500, "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED")
SUBTLE = (501, "ERR_API_UNIMPLEMENTED")
CONVERSATION = (400, "ERR_CONVERSATION_NOT_FOUND")
BINDING = (500, "ERR_INVOKE_OUTPUT_BINDING")
DAPRD_ROUTES = [
    ("GET", "/v1.0/state/store/key", STATE),
    ("DELETE", "/v1.0/state/store/key", STATE),
    ("POST", "/v1.0/state/store", STATE),
    ("PUT", "/v1.0/state/store", STATE),
    ("POST", "/v1.0/state/store/bulk", STATE),
    ("PUT", "/v1.0/state/store/transaction", STATE),
    ("GET", "/v1.0/state/store/bulk", STATE),  # GetState of the key "bulk", as chi routes it
    ("POST", "/v1.0-alpha1/state/store/query", STATE),
    ("POST", "/v1.0/bindings/binding", BINDING),
    ("PUT", "/v1.0/bindings/binding", BINDING),
    ("POST", "/v1.0/actors/Type/id/state", NO_PLACEMENT),
    ("PUT", "/v1.0/actors/Type/id/state", NO_PLACEMENT),
    ("GET", "/v1.0/actors/Type/id/state/key", NO_PLACEMENT),
    ("GET", "/v1.0/actors/Type/id/method/run", NO_PLACEMENT),
    ("POST", "/v1.0/actors/Type/id/method/run", NO_PLACEMENT),
    ("PUT", "/v1.0/actors/Type/id/method/run", NO_PLACEMENT),
    ("DELETE", "/v1.0/actors/Type/id/method/run", NO_PLACEMENT),
    ("POST", "/v1.0/actors/Type/id/reminders/r", NO_PLACEMENT),
    ("GET", "/v1.0/actors/Type/id/reminders/r", NO_PLACEMENT),
    ("DELETE", "/v1.0/actors/Type/id/reminders/r", NO_PLACEMENT),
    ("PUT", "/v1.0/actors/Type/id/timers/t", NO_PLACEMENT),
    ("DELETE", "/v1.0/actors/Type/id/timers/t", NO_PLACEMENT),
    ("GET", "/v1.0/configuration/store", CONFIGURATION),
    ("GET", "/v1.0-alpha1/configuration/store", CONFIGURATION),
    ("GET", "/v1.0/configuration/store/subscribe", CONFIGURATION),
    ("GET", "/v1.0-alpha1/configuration/store/id/unsubscribe", CONFIGURATION),
    ("POST", "/v1.0-alpha1/lock/store", LOCK),
    ("POST", "/v1.0-alpha1/unlock/store", LOCK),
    ("GET", "/v1.0/workflows/dapr/instance", NO_PLACEMENT),
    ("GET", "/v1.0-beta1/workflows/dapr/instance", NO_PLACEMENT),
    ("POST", "/v1.0-alpha1/workflows/dapr/name/start", NO_PLACEMENT),
    ("POST", "/v1.0-beta1/workflows/dapr/instance/raiseEvent/event", NO_PLACEMENT),
    ("POST", "/v1.0/workflows/dapr/instance/pause", NO_PLACEMENT),
    ("POST", "/v1.0/workflows/dapr/instance/resume", NO_PLACEMENT),
    ("POST", "/v1.0-beta1/workflows/dapr/instance/terminate", NO_PLACEMENT),
    ("POST", "/v1.0/workflows/dapr/instance/purge", NO_PLACEMENT),
    ("POST", "/v1.0/jobs/job", (500, "DAPR_SCHEDULER_SCHEDULE_JOB")),
    ("GET", "/v1.0-alpha1/jobs/job", (500, "DAPR_SCHEDULER_GET_JOB")),
    ("DELETE", "/v1.0/jobs/job", (500, "DAPR_SCHEDULER_DELETE_JOB")),
    ("PUT", "/v1.0-alpha1/crypto/provider/encrypt", CRYPTO),
    ("PUT", "/v1.0-alpha1/crypto/provider/decrypt", CRYPTO),
    ("POST", "/v1.0-alpha1/subtlecrypto/provider/getkey", SUBTLE),
    ("POST", "/v1.0-alpha1/subtlecrypto/provider/sign", SUBTLE),
    ("POST", "/v1.0-alpha1/subtlecrypto/provider/unwrapkey", SUBTLE),
    ("POST", "/v1.0-alpha1/conversation/llm/converse", CONVERSATION),
    ("POST", "/v1.0-alpha2/conversation/llm/converse", CONVERSATION),
]


@pytest.mark.parametrize(("method", "path", "expected"), DAPRD_ROUTES)
def test_blocks_not_served_answer_daprds_not_configured_error(
    client: DaprTestClient, method: str, path: str, expected: tuple[int, str]
) -> None:
    answer = client.request(method, path, json={"key": "k", "value": "v"})
    assert (answer.status_code, answer.json()["errorCode"]) == expected
    assert answer.headers["content-type"] == "application/json"


def test_the_state_error_is_daprds_body(client: DaprTestClient) -> None:
    # What daprd's integration test tests/integration/suite/daprd/state/http/nostatestore.go checks.
    answer = client.post("/v1.0/state/my%20store", json=[{"key": "k", "value": "v"}])
    assert answer.content == (
        b'{"errorCode":"ERR_STATE_STORE_NOT_CONFIGURED","message":"state store my store is not configured",'
        b'"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"dapr.io",'
        b'"metadata":{"appID":"app1"},"reason":"DAPR_STATE_NOT_CONFIGURED"}]}'
    )


def test_the_other_errors_name_what_was_asked_for(client: DaprTestClient) -> None:
    assert client.post("/v1.0/bindings/mail", json={}).json()["message"] == (
        "error invoking output binding mail: couldn't find output binding mail"
    )
    assert client.post("/v1.0-alpha2/conversation/llm/converse", json={}).json()["message"] == (
        "failed finding conversation component llm"
    )
    assert client.get("/v1.0/jobs/nightly").json() == {
        "errorCode": "DAPR_SCHEDULER_GET_JOB",
        "message": "failed to get job due to: scheduler clients are disabled",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": "dapr.io",
                "metadata": {"appID": "app1", "namespace": "default"},
                "reason": "DAPR_SCHEDULER_GET_JOB",
            }
        ],
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1.0/state/store/other"),  # no such route
        ("PATCH", "/v1.0/state/store"),  # not one of its methods
        ("GET", "/v1.0-alpha1/state/store/key"),  # not one of its versions
        ("POST", "/v1.0/lock/store"),
        ("GET", "/v1.0/actors/Type/id/method/a/b"),  # an actor method is one segment
        ("PATCH", "/v1.0/actors/Type/id/method/run"),
        ("POST", "/v1.0/jobs"),
    ],
)
def test_what_daprd_does_not_route_is_still_an_invocation(
    client: DaprTestClient, method: str, path: str
) -> None:
    answer = client.request(method, path, content=b"{}")
    assert (answer.status_code, answer.json()) == (404, NO_APP_ID)


def test_a_parameter_that_is_not_a_valid_escape_is_daprds_400(client: DaprTestClient) -> None:
    answer = client.post("/v1.0/state/store%zz", json=[])
    assert (answer.status_code, answer.text) == (400, 'failed to unescape request parameter "store%zz"\n')


def test_the_blocks_not_served_need_the_api_token() -> None:
    with embedded(api_token="secret") as client:
        assert client.post("/v1.0/state/store", json=[]).status_code == 401
        answer = client.post("/v1.0/state/store", json=[], headers={"dapr-api-token": "secret"})
        assert answer.json()["errorCode"] == "ERR_STATE_STORE_NOT_CONFIGURED"


# -- PUT /v1.0/metadata/{key} ------------------------------------------------------------------


def test_put_metadata_sets_an_extended_value(client: DaprTestClient) -> None:
    answer = client.put("/v1.0/metadata/appCommand", content=b"uvicorn main:app")
    assert (answer.status_code, answer.content) == (204, b"")
    client.put("/v1.0/metadata/a%2Fb", content=b"one")
    client.put("/v1.0/metadata/a%2Fb", content=b"two")  # replaced
    client.put("/v1.0/metadata/bytes", content=b"\xff")
    extended = client.get("/v1.0/metadata").json()["extended"]
    assert extended["appCommand"] == "uvicorn main:app"
    assert extended["a/b"] == "two"
    assert extended["bytes"] == "\ufffd"  # as Go writes a string that is not UTF-8
    assert extended["runtime"] == "fastapi-dapr embedded"


def test_put_metadata_routes_as_daprd(client: DaprTestClient) -> None:
    assert client.put("/v1.0/metadata", content=b"x").json() == NO_APP_ID
    assert client.put("/v1.0/metadata/a/b", content=b"x").json() == NO_APP_ID
    assert client.post("/v1.0/metadata/a", content=b"x").json() == NO_APP_ID
    assert client.put("/v1.0/metadata/%zz", content=b"x").status_code == 400


def test_the_extended_metadata_holds_at_most_the_body_limit() -> None:
    with embedded(max_body_size=100) as client:
        too_large = client.put("/v1.0/metadata/big", content=b"x" * 101)
        assert too_large.status_code == 413
        assert too_large.json()["errorCode"] == "ERR_METADATA_TOO_LARGE"
        assert client.put("/v1.0/metadata/a", content=b"x" * 60).status_code == 204  # 61 bytes
        assert client.put("/v1.0/metadata/b", content=b"x" * 40).status_code == 413  # 61 + 41
        assert client.put("/v1.0/metadata/a", content=b"x" * 10).status_code == 204  # replaced: 11
        assert client.put("/v1.0/metadata/b", content=b"x" * 40).status_code == 204  # 11 + 41
        extended = client.get("/v1.0/metadata").json()["extended"]
    assert (extended["a"], extended["b"]) == ("x" * 10, "x" * 40)
    assert "big" not in extended


# -- POST /v1.0/shutdown -----------------------------------------------------------------------


def test_shutdown_is_refused_where_nothing_would_stop_the_app(client: DaprTestClient) -> None:
    # A test client runs no server: nothing in the process stops gracefully on SIGTERM.
    answer = client.post("/v1.0/shutdown")
    assert answer.status_code == 501
    assert answer.json()["errorCode"] == "ERR_API_UNIMPLEMENTED"
    assert "stop the app" in answer.json()["message"]
    assert client.get("/v1.0/healthz").status_code == 204  # still running
    assert client.get("/v1.0/shutdown").json() == NO_APP_ID  # daprd routes POST only


@pytest.mark.process
async def test_shutdown_stops_an_embedded_app_gracefully() -> None:
    app = App("embedded_app")
    async with running(app):
        async with httpx.AsyncClient(base_url=app.url) as client:
            answer = await client.post("/v1.0/shutdown")
        assert (answer.status_code, answer.content) == (204, b"")
        status = await app.wait(15)  # it exits by itself
        output = app.text
    # As after `kill -TERM`: uvicorn (0.29 and later) raises the signal again once it has stopped.
    assert status in (0, -signal.SIGTERM)
    assert "shutdown requested through the API" in output
    assert "embedded app: lifespan ended" in output  # the app's own shutdown ran
    assert "Finished server process" in output


@pytest.mark.process
async def test_shutdown_stops_the_standalone_sidecar_gracefully() -> None:
    sidecar = Sidecar("alone", None)
    async with running(sidecar):
        async with sidecar.client() as client:
            assert (await client.put("/v1.0/metadata/cliPID", content=b"42")).status_code == 204
            assert (await client.get("/v1.0/metadata")).json()["extended"]["cliPID"] == "42"
            answer = await client.post("/v1.0/shutdown")
        assert (answer.status_code, answer.content) == (204, b"")
        status = await sidecar.wait(15)
        output = sidecar.text
    assert status == 0
    assert "shutdown requested through the API" in output
    assert "app id alone: stopped" in output


# -- the official SDKs' clients ----------------------------------------------------------------


@pytest.mark.node
@pytest.mark.process
@pytest.mark.timeout(720)  # the first one npm-installs the SDK (up to 600 s)
async def test_the_official_js_sdk_fails_on_blocks_not_served(node_modules: Path) -> None:
    sidecar = Sidecar("jsapp", None)
    async with running(sidecar):
        process = await asyncio.create_subprocess_exec(
            "node",
            str(JS / "blocks.js"),
            str(sidecar.port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=node_env(node_modules),
        )
        out, err = await communicate(process, 60)
        assert process.returncode == 0, err.decode()
        result = json.loads(out.decode().strip().splitlines()[-1])
        status = await sidecar.wait(15)  # the SDK's sidecar.shutdown() stopped it
    assert status == 0
    # state.save catches every error and returns it (it never raises): before, it returned
    # invocation's 404, which reads as "no such key"; now daprd's 500 says why.
    saved = json.loads(result["save"]["resolved"]["error"])
    assert saved["status"] == 500
    assert json.loads(saved["error_msg"])["errorCode"] == "ERR_STATE_STORE_NOT_CONFIGURED"
    for call, code in (
        ("get", "ERR_STATE_STORE_NOT_CONFIGURED"),
        ("binding", "ERR_INVOKE_OUTPUT_BINDING"),
        ("lock", "ERR_LOCK_STORE_NOT_CONFIGURED"),
        ("workflow", "ERR_ACTOR_NO_PLACEMENT"),
    ):
        assert code in result[call]["rejected"], (call, result[call])
    assert result["setMetadata"] == {"resolved": True}
    assert result["metadata"]["resolved"]["extended"]["fromJs"] == "hello"
    assert result["shutdown"] == {"resolved": None}


SDK_ACTORS = """
import asyncio, json, sys
from dapr.conf import settings
settings.DAPR_HTTP_ENDPOINT = sys.argv[1]
from dapr.clients.exceptions import DaprInternalError
from dapr.clients.http.dapr_actor_http_client import DaprActorHttpClient
from dapr.serializers import DefaultJSONSerializer

async def main():
    client = DaprActorHttpClient(DefaultJSONSerializer())
    calls = {
        "invoke": lambda: client.invoke_method("Counter", "1", "add", b"{}"),
        "state": lambda: client.save_state_transactionally("Counter", "1", b"[]"),
        "reminder": lambda: client.register_reminder("Counter", "1", "r", b'{"dueTime": "1s"}'),
    }
    errors = {}
    for name, call in calls.items():
        try:
            await call()
        except DaprInternalError as exc:
            errors[name] = exc.as_dict()["errorCode"]
    print(json.dumps(errors))

asyncio.run(main())
"""


@pytest.mark.process
async def test_the_official_python_sdk_actor_client_fails_loudly() -> None:
    sidecar = Sidecar("pyapp", None)
    async with running(sidecar):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SDK_ACTORS,
            sidecar.url,
            stdout=asyncio.subprocess.PIPE,
            env=environment(),
        )
        out, _ = await communicate(process, 60)
    assert process.returncode == 0
    assert json.loads(out) == {
        "invoke": "ERR_ACTOR_NO_PLACEMENT",
        "state": "ERR_ACTOR_NO_PLACEMENT",
        "reminder": "ERR_ACTOR_NO_PLACEMENT",
    }


def test_an_app_route_beside_the_new_versions_is_not_taken() -> None:
    # The sidecar serves daprd's versions (v1.0-alpha2 and v1.0-beta1 now too); other paths stay the app's.
    app = FastAPI()
    Dapr(app, api_token="")

    @app.get("/v1.0-gamma1/x")
    async def mine() -> dict[str, str]:
        return {"app": "yes"}

    with TestClient(app) as client:
        assert client.get("/v1.0-gamma1/x").json() == {"app": "yes"}
        assert client.get("/v1.0-beta1/workflows/dapr/i").json()["errorCode"] == "ERR_ACTOR_NO_PLACEMENT"
