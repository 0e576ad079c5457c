"""InvokeService: the official Python SDK's `invoke_method` over gRPC
(`DAPR_API_METHOD_INVOCATION_PROTOCOL=grpc`), sync and `dapr.aio`, against the embedded app
and the standalone sidecar, made into the HTTP API's own invocation; and the translation's
pieces (the call's metadata as headers, the answer's headers as metadata) in process."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from dapr.proto.common.v1 import common_pb2
from google.protobuf import any_pb2

from fastapi_dapr.sidecar.grpc_api import invoke

from ..sidecar.test_standalone import App, running
from .kit import GrpcApp, GrpcSidecar, run_sdk
from .test_app_channel import ExtApp, sidecar_for

# Each call's outcome as JSON: the answer (its body, content type and metadata) or the
# gRPC error (code, message, and the ErrorInfo among its details).
OUTCOME = """
    import json, warnings
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    warnings.simplefilter("ignore", DeprecationWarning)

    def answered(response):
        headers = {key: value for key, value in response.get_headers()}
        headers = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in headers.items()}
        try:
            body = response.json()
        except ValueError:
            body = response.text()
        return {"body": body, "content_type": response.content_type, "headers": headers}

    def failed(error):
        out = {"code": error.code().name, "message": error.details()}
        status = rpc_status.from_call(error)
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out["info"] = {"reason": info.reason, "metadata": dict(info.metadata)}
        out["headers"] = {k: v for k, v in (error.initial_metadata() or ()) if isinstance(v, str)}
        return out
"""

SYNC = (
    OUTCOME
    + """
    from dapr.clients import DaprClient
    APP = "{app}"
    results = {}
    with DaprClient() as client:
        def call(name, *args, **kwargs):
            try:
                results[name] = answered(client.invoke_method(*args, **kwargs))
            except grpc.RpcError as error:
                results[name] = failed(error)
        call("json", APP, "{echo}/a/b", data=json.dumps({"n": 1}), content_type="application/json",
             http_verb="POST", http_querystring=(("x", "1"), ("y", "two words")))
        call("get", APP, "{echo}/get", http_verb="GET")
        call("put", APP, "{echo}/put", data=b"raw bytes", content_type="application/octet-stream",
             http_verb="PUT")
        call("delete", APP, "{echo}/gone", http_verb="DELETE")
        call("traced", APP, "{echo}/traced", http_verb="GET", metadata=(
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("x-custom", "kept"), ("grpc-custom", "renamed"), ("dapr-app-id", "elsewhere")))
        call("404", APP, "{echo}/missing", http_verb="GET", http_querystring=(("status", "404"),))
        call("500", APP, "{echo}/broken", http_verb="POST", data="kaput",
             http_querystring=(("status", "500"),))
        call("no_verb", APP, "{echo}/x")
        call("unknown_app", "nobody", "{echo}/x", http_verb="GET")
        call("unknown_app_no_verb", "nobody", "{echo}/x")
    print(json.dumps(results))
"""
)

AIO = (
    OUTCOME
    + """
    import asyncio
    from dapr.aio.clients import DaprClient
    APP = "{app}"

    async def main():
        results = {}
        async with DaprClient() as client:
            async def call(name, *args, **kwargs):
                try:
                    results[name] = answered(await client.invoke_method(*args, **kwargs))
                except grpc.RpcError as error:
                    results[name] = failed(error)
            await call("json", APP, "{echo}/aio", data=json.dumps({"aio": True}),
                       content_type="application/json", http_verb="PATCH",
                       http_querystring=(("q", "1"),))
            await call("404", APP, "{echo}/missing", http_verb="GET",
                       http_querystring=(("status", "404"),))
            await call("unknown_app", "nobody", "{echo}/x", http_verb="GET")
        return results

    print(json.dumps(asyncio.run(main())))
"""
)

GRPC = {"DAPR_API_METHOD_INVOCATION_PROTOCOL": "grpc"}


def sdk(code: str, app_id: str, echo: str) -> str:
    """`code` invoking `app_id`, whose echoing route is under `echo`."""
    return code.replace("{app}", app_id).replace("{echo}", echo)


def check_echo(result: dict[str, Any], verb: str, path: str, query: str = "") -> dict[str, Any]:
    """The echoed request of a 2xx answer: its verb, path and query; what it echoed."""
    assert result["headers"]["dapr-http-status"] == "200", result
    echoed: dict[str, Any] = result["body"]
    assert (echoed["method"], echoed["path"], echoed["query"]) == (verb, path, query)
    return echoed


def check_sync(results: dict[str, Any], app_id: str) -> None:
    json_call = results["json"]
    echoed = check_echo(json_call, "POST", "/echo/a/b", "x=1&y=two+words")
    assert echoed["body"] == '{"n": 1}'
    assert echoed["headers"]["content-type"] == "application/json"
    assert echoed["headers"]["dapr-caller-app-id"] == app_id
    assert "dapr-api-token" not in echoed["headers"]  # the caller's token goes no further
    assert json_call["content_type"] == "application/json"
    assert json_call["headers"]["dapr-content-type"] == "application/json"  # daprd's prefix

    check_echo(results["get"], "GET", "/echo/get")
    put = check_echo(results["put"], "PUT", "/echo/put")
    assert (put["body"], put["headers"]["content-type"]) == ("raw bytes", "application/octet-stream")
    check_echo(results["delete"], "DELETE", "/echo/gone")

    traced = results["traced"]
    headers = check_echo(traced, "GET", "/echo/traced")["headers"]
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers["traceparent"] == parent
    assert (headers["x-custom"], headers["dapr-grpc-custom"]) == ("kept", "renamed")
    assert "dapr-app-id" not in headers
    assert traced["headers"]["traceparent"] == parent  # the answer carries the trace back

    # A status that is not 2xx is daprd's gRPC error for it, with the status in the metadata.
    missing = results["404"]
    assert (missing["code"], missing["message"]) == ("NOT_FOUND", "Not Found")
    assert missing["info"]["reason"] == "Not Found"
    assert missing["info"]["metadata"]["http.code"] == "404"
    assert missing["headers"]["dapr-http-status"] == "404"
    broken = results["500"]
    assert (broken["code"], broken["message"]) == ("UNKNOWN", "Internal Server Error")
    assert broken["info"]["metadata"]["http.code"] == "500"
    # The body's first 63 bytes, as daprd cuts it.
    assert (
        broken["info"]["metadata"]["http.error_message"]
        == '{"method": "POST", "path": "/echo/broken", "query": "status=500"'[:63]
    )

    # Without a verb the HTTP target can't be called: daprd's error, after the target is found.
    assert results["no_verb"]["code"] == "INTERNAL"
    assert results["no_verb"]["message"] == (
        f"failed to invoke, id: {app_id}, err: rpc error: code = InvalidArgument "
        "desc = missing HTTP extension field"
    )
    for name in ("unknown_app", "unknown_app_no_verb"):
        assert results[name]["code"] == "INTERNAL"
        assert results[name]["message"].startswith("failed to invoke, id: nobody, err: couldn't find service")


def check_aio(results: dict[str, Any]) -> None:
    echoed = check_echo(results["json"], "PATCH", "/echo/aio", "q=1")
    assert echoed["body"] == '{"aio": true}'
    assert results["404"]["code"] == "NOT_FOUND"
    assert results["404"]["headers"]["dapr-http-status"] == "404"
    assert results["unknown_app"]["code"] == "INTERNAL"


@pytest.mark.process
async def test_the_sdk_invokes_the_embedded_app_over_grpc() -> None:
    app = GrpcApp(DAPR_API_TOKEN="api-secret")
    async with running(app):
        ports = {"http_port": app.port, "grpc_port": app.grpc_port, "token": "api-secret"}
        check_sync(await run_sdk(sdk(SYNC, "grpcapp", "echo"), **ports, **GRPC), "grpcapp")
        check_aio(await run_sdk(sdk(AIO, "grpcapp", "echo"), **ports, **GRPC))


STANDALONE = (
    OUTCOME
    + """
    from dapr.clients import DaprClient
    URL = "{url}"
    results = {}
    with DaprClient() as client:
        def call(name, *args, **kwargs):
            try:
                results[name] = answered(client.invoke_method(*args, **kwargs))
            except grpc.RpcError as error:
                results[name] = failed(error)
        call("json", "plain", "hello/grpc", data=json.dumps({"a": 1}), content_type="application/json",
             http_verb="POST", http_querystring=(("k", "v"),))
        call("404", "plain", "nowhere", http_verb="GET")
        call("405", "plain", "hello/x", http_verb="PUT")
        call("endpoint", "loopback", "hello/ep", http_verb="GET")
        call("url", URL, "hello/url", http_verb="GET")
    print(json.dumps(results))
"""
)


def loopback_endpoint(folder: Path, port: int) -> Path:
    """A resources folder with an HTTPEndpoint `loopback` to the app, adding a header."""
    folder.mkdir()
    (folder / "endpoint.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: loopback}\n"
        f"spec:\n  baseUrl: http://127.0.0.1:{port}\n  headers:\n  - {{name: X-Via, value: endpoint}}\n"
    )
    return folder


@pytest.mark.process
async def test_the_sdk_invokes_through_the_standalone_sidecar_over_grpc(tmp_path: Path) -> None:
    app = App(APP_API_TOKEN="app-secret")
    folder = loopback_endpoint(tmp_path / "resources", app.port)
    sidecar = GrpcSidecar(
        "plain",
        app.port,
        "--resources-path",
        str(folder),
        APP_API_TOKEN="app-secret",
        DAPR_API_TOKEN="api-secret",
    )
    url = f"http://127.0.0.1:{app.port}"
    async with running(app, sidecar):
        ports = {"http_port": sidecar.port, "grpc_port": sidecar.grpc_port, "token": "api-secret"}
        results = await run_sdk(STANDALONE.replace("{url}", url), **ports, **GRPC)
        # The same URL target over HTTP: the gRPC answer is the HTTP route's own.
        async with sidecar.client("api-secret") as client:
            over_http = await client.get(f"/v1.0/invoke/{quote(url, safe='')}/method/hello/url")
    answer = results["json"]
    assert answer["headers"]["dapr-http-status"] == "200"
    body = answer["body"]
    assert (body["hello"], body["query"], body["body"]) == ("grpc", "k=v", {"a": 1})
    assert (body["caller"], body["callee"], body["token"]) == ("plain", "plain", "app-secret")

    assert (results["404"]["code"], results["404"]["message"]) == ("NOT_FOUND", "Not Found")
    assert results["404"]["info"]["metadata"]["http.error_message"] == '{"detail":"Not Found"}'
    # A status gRPC has no code for: Unknown, as daprd's CodeFromHTTPStatus.
    assert (results["405"]["code"], results["405"]["message"]) == ("UNKNOWN", "Method Not Allowed")
    assert results["405"]["headers"]["dapr-http-status"] == "405"

    endpoint = results["endpoint"]["body"]
    assert (endpoint["hello"], endpoint["caller"], endpoint["token"]) == ("ep", None, None)

    # A URL target is refused unless allowed, over gRPC as over HTTP (ERR_DIRECT_INVOKE: Internal).
    assert over_http.status_code == 403
    assert (results["url"]["code"], results["url"]["message"]) == ("INTERNAL", over_http.json()["message"])


GRPC_APP = (
    OUTCOME
    + """
    from dapr.clients import DaprClient
    results = {}
    with DaprClient() as client:
        def call(name, *args, **kwargs):
            try:
                results[name] = answered(client.invoke_method(*args, **kwargs))
            except grpc.RpcError as error:
                results[name] = failed(error)
        call("no_verb", "extapp", "echo", data="no verb", content_type="text/plain")
        call("missing", "extapp", "missing", data="x", http_verb="GET")
        call("fail", "extapp", "fail", data="x", http_verb="POST")
    print(json.dumps(results))
"""
)


@pytest.mark.process
async def test_a_grpc_apps_own_answers_come_back_as_daprd_passes_them_on() -> None:
    app = ExtApp()
    sidecar = sidecar_for(app)
    async with running(app, sidecar):
        results = await run_sdk(GRPC_APP, http_port=sidecar.port, grpc_port=sidecar.grpc_port, **GRPC)
        async with sidecar.client() as client:
            missing_over_http = (await client.get("/v1.0/invoke/extapp/method/missing")).json()
    # daprd's gRPC channel needs no verb: the message reaches OnInvoke.
    no_verb = results["no_verb"]
    assert no_verb["body"]["data"] == "no verb"
    assert "dapr-http-status" not in no_verb["headers"]  # an HTTP app's metadata only
    # The app's status itself, not one made of an HTTP status.
    assert results["missing"]["code"] == "UNIMPLEMENTED"
    assert results["missing"]["message"] == missing_over_http["message"]
    assert results["fail"]["code"] == "UNKNOWN"
    assert "the fail method fails" in results["fail"]["message"]


# -- the translation, in process --------------------------------------------------------------


def message(**fields: Any) -> Any:
    return common_pb2.InvokeRequest(**fields)


def test_the_calls_metadata_becomes_the_headers_daprd_sends() -> None:
    metadata = [
        ("user-agent", "grpc-python"),
        ("x-custom", "kept"),
        ("grpc-custom", "renamed"),
        ("dapr-api-token", "the caller's"),
        ("dapr-app-id", "elsewhere"),
        ("authorization", "Basic " + base64.b64encode(b"dapr-app-id:other").decode()),
        ("connection", "x-hop"),
        ("x-hop", "dropped"),
        ("keep-alive", "dropped"),
        ("content-type", "application/grpc"),
        ("content-length", "99"),
        ("x-data-bin", b"\x00"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("baggage", "k=v"),
    ]
    trace = invoke.request_trace(metadata)
    request = message(data=any_pb2.Any(value=b"12345"), content_type="text/plain")
    headers = invoke.invocation_headers(metadata, request, drop_token=True, trace=trace)
    assert [(k.decode(), v.decode()) for k, v in headers] == [
        ("user-agent", "grpc-python"),
        ("x-custom", "kept"),
        ("dapr-grpc-custom", "renamed"),
        ("baggage", "k=v"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("content-type", "text/plain"),
        ("content-length", "5"),
    ]
    # Without DAPR_API_TOKEN the guard checked no token: the caller's passes on, as in daprd.
    kept = invoke.invocation_headers([("dapr-api-token", "t")], message(), drop_token=False, trace=None)
    assert (b"dapr-api-token", b"t") in kept
    # Data with a type URL is protobuf, whatever the content type says (daprd's ContentType()).
    typed = message(
        data=any_pb2.Any(type_url="type.googleapis.com/x.Y", value=b"\x08\x01"), content_type="a/b"
    )
    assert (b"content-type", b"application/x-protobuf") in invoke.invocation_headers(
        [], typed, drop_token=True, trace=None
    )


def test_the_verb_is_daprds() -> None:
    get = message(http_extension=common_pb2.HTTPExtension(verb=common_pb2.HTTPExtension.GET))
    assert invoke.http_verb(get) == ("GET", None)
    assert invoke.http_verb(message()) == ("", "missing HTTP extension field")
    for verb in (common_pb2.HTTPExtension.NONE, common_pb2.HTTPExtension.CONNECT):
        refused = message(http_extension=common_pb2.HTTPExtension(verb=verb))
        assert invoke.http_verb(refused) == ("", "invalid HTTP verb")


def test_the_answers_headers_become_daprds_metadata() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"date", b"Thu, 03 Dec 2026 20:00:00 GMT"),
        (b"x-app", b"yes"),
        (b"X-Upper", b"lowered"),
        (b"grpc-status", b"0"),
        (b"x-blob-bin", base64.b64encode(b"\x00\x01")),
        (b"x-latin", "caf\u00e9".encode("latin-1")),
        (b"bad name", b"x"),
        (b"tracestate", b"k=v"),
        (b"traceparent", b"00-11111111111111111111111111111111-2222222222222222-01"),
    ]
    request_trace = ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "")
    assert invoke.answer_metadata(headers, 201, request_trace) == [
        ("dapr-content-type", "application/json"),
        ("dapr-date", "Thu, 03 Dec 2026 20:00:00 GMT"),
        ("x-app", "yes"),
        ("x-upper", "lowered"),
        ("x-blob-bin", b"\x00\x01"),
        # The answer's own trace, before the request's.
        ("traceparent", "00-11111111111111111111111111111111-2222222222222222-01"),
        ("tracestate", "k=v"),
        ("dapr-http-status", "201"),
    ]
    assert invoke.answer_metadata([], 200, request_trace)[0] == ("traceparent", request_trace[0])


class Context:
    """What `reply` uses of a grpc.aio servicer context."""

    def __init__(self) -> None:
        self.initial: list[Any] = []
        self.aborted: tuple[Any, str, Any] | None = None

    async def send_initial_metadata(self, metadata: list[Any]) -> None:
        self.initial = metadata

    async def abort(self, code: Any, message: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, message, trailing_metadata)
        raise RuntimeError("aborted")


def answer(status: int, body: bytes) -> invoke.RouteAnswer:
    route = invoke.RouteAnswer()
    route.status, route.headers, route.chunks, route.complete = status, [], [body], True
    return route


async def test_a_cut_that_is_not_utf8_is_sent_without_details() -> None:
    context = Context()
    with pytest.raises(RuntimeError):
        await invoke.reply(context, answer(500, "é".encode() * 40), None)  # byte 63 cuts a character
    assert context.aborted is not None
    code, text, trailer = context.aborted
    assert (code, text, trailer) == (grpc.StatusCode.UNKNOWN, "Internal Server Error", ())
    assert context.initial == [("dapr-http-status", "500")]

    context = Context()
    with pytest.raises(RuntimeError):
        await invoke.reply(context, answer(503, b"down"), None)
    assert context.aborted is not None
    assert context.aborted[:2] == (grpc.StatusCode.UNAVAILABLE, "Service Unavailable")
    assert context.aborted[2][0][0] == "grpc-status-details-bin"
