"""The official JavaScript SDK (`@dapr/dapr`) with `CommunicationProtocolEnum.GRPC`, in a node
process of its own, against the embedded app's gRPC API and the standalone sidecar's.

Its gRPC client needs only the gRPC port (the `daprPort` option; `DAPR_GRPC_PORT` otherwise):
it waits for the sidecar with `GetMetadata` over gRPC, not with an HTTP health check. It
publishes with `PublishEvent`, bulk-publishes with `BulkPublishEventAlpha1`, invokes with
`InvokeService`, and reads secrets and the metadata with their RPCs (tests/js/grpc_client.js).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.rpc import error_details_pb2

from ..processes import communicate
from ..sidecar import test_standalone
from ..sidecar.test_standalone import JS, App, node_env, running
from .kit import SECRETS, STORE, GrpcApp, GrpcSidecar, secret_store

pytestmark = [pytest.mark.process, pytest.mark.node]

node_modules = test_standalone.node_modules  # the fixture: @dapr/dapr installed once, cached

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


async def run_js(modules: Path, grpc_port: int, app_id: str, method: str, **env: str | None) -> Any:
    """tests/js/grpc_client.js against `grpc_port`; what it printed, as JSON."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(JS / "grpc_client.js"),
        str(grpc_port),
        app_id,
        method,
        STORE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=node_env(modules, **env),
    )
    out, err = await communicate(process, 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def received(url: str, count: int, kind: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        answer = await client.get("/received", params={"count": count, "kind": kind})
    records: list[dict[str, Any]] = answer.json()["received"]
    return records


def error_info(rejected: dict[str, Any]) -> error_details_pb2.ErrorInfo:
    """The `google.rpc.ErrorInfo` among the details the SDK read from the status."""
    (detail,) = [d for d in rejected["details"] if d["type"] in (ERROR_INFO, "google.rpc.ErrorInfo")]
    info = error_details_pb2.ErrorInfo()
    info.ParseFromString(base64.b64decode(detail["value"]))
    return info


def check_common(result: dict[str, Any], app_id: str, orders: list[dict[str, Any]]) -> None:
    """What both modes answer alike: publishing, metadata, secrets and daprd's errors."""
    assert result["published"] == {"resolved": {}}
    assert result["bulk"] == {"resolved": {"failedMessages": []}}
    events = sorted((record["body"] for record in orders), key=lambda event: str(event["data"]["from"]))
    assert [event["data"] for event in events] == [
        {"from": "js-grpc", "n": 1},
        {"from": "js-grpc-bulk", "n": 2},
    ]
    assert {event["datacontenttype"] for event in events} == {"application/json"}
    assert {(event["pubsubname"], event["topic"]) for event in events} == {("pubsub", "orders")}

    assert result["setMetadata"] == {"resolved": True}
    metadata = result["metadata"]["resolved"]
    assert metadata["id"] == app_id
    assert metadata["extended"]["fromJs"] == "grpc"
    components = {(component["name"], component["type"]) for component in metadata["components"]}
    assert ("pubsub", "pubsub.in-memory") in components

    assert result["secret"] == {"resolved": {"password": "s3cret"}}
    assert result["bulkSecrets"] == {"resolved": {key: {key: value} for key, value in SECRETS.items()}}
    unknown_store = result["unknownStore"]["rejected"]
    assert unknown_store["code"] == 3  # InvalidArgument
    assert unknown_store["message"] == "failed finding secret store with key nostore"

    # daprd's answer for an unknown pubsub: InvalidArgument, with an ErrorInfo (and no ResourceInfo).
    unknown = result["unknownPubsub"]["rejected"]
    assert (unknown["code"], unknown["message"]) == (3, "pubsub nope is not found")
    info = error_info(unknown)
    assert (info.reason, info.domain) == ("DAPR_PUBSUB_NOT_FOUND", "dapr.io")


@pytest.mark.timeout(720)  # the first node test npm-installs the SDK (up to 600 s)
async def test_the_js_sdk_over_grpc_against_the_embedded_app(node_modules: Path, tmp_path: Path) -> None:
    app = GrpcApp(resources=secret_store(tmp_path / "resources"))
    async with running(app):
        result = await run_js(node_modules, app.grpc_port, "grpcapp", "echo/js")
        orders = await received(app.url, 2, "orders")
    check_common(result, "grpcapp", orders)
    # InvokeService: the app's own id, served in process, with the SDK's verb and body.
    invoked = result["invoked"]["resolved"]
    assert (invoked["method"], invoked["path"], json.loads(invoked["body"])) == ("POST", "/echo/js", {"n": 3})
    assert invoked["headers"]["content-type"] == "application/json"


@pytest.mark.timeout(720)  # the first node test npm-installs the SDK (up to 600 s)
async def test_the_js_sdk_over_grpc_against_the_standalone_sidecar(
    node_modules: Path, tmp_path: Path
) -> None:
    app = App(APP_API_TOKEN="app-secret")
    folder = secret_store(tmp_path / "resources")
    sidecar = GrpcSidecar(
        "plain",
        app.port,
        "--resources-path",
        str(folder),
        APP_API_TOKEN="app-secret",
        DAPR_API_TOKEN="api-secret",
    )
    async with running(app, sidecar):
        # The SDK reads DAPR_API_TOKEN and sends it as dapr-api-token metadata on every call.
        token = {"DAPR_API_TOKEN": "api-secret"}
        result = await run_js(node_modules, sidecar.grpc_port, "plain", "hello/js", **token)
        orders = await received(app.url, 2, "orders")
    check_common(result, "plain", orders)
    invoked = result["invoked"]["resolved"]
    assert (invoked["hello"], invoked["body"]) == ("js", {"n": 3})
    assert (invoked["token"], invoked["caller"], invoked["callee"]) == ("app-secret", "plain", "plain")


@pytest.mark.timeout(720)  # the first node test npm-installs the SDK (up to 600 s)
async def test_the_js_sdk_over_grpc_without_the_token_is_refused(node_modules: Path) -> None:
    sidecar = GrpcSidecar("plain", None, DAPR_API_TOKEN="api-secret")
    async with running(sidecar):
        process = await asyncio.create_subprocess_exec(
            "node",
            "-e",
            METADATA_ONLY,
            str(sidecar.grpc_port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=node_env(node_modules),
        )
        out, err = await communicate(process, 30)
    assert process.returncode == 0, err.decode()
    assert json.loads(out.decode().strip().splitlines()[-1]) == {"code": 16, "message": "Unauthorized"}


# A raw call of the SDK's gRPC client, since its DaprClient retries GetMetadata for 60 s
# (its start-up wait) before raising its own DAPR_SIDECAR_COULD_NOT_BE_STARTED.
METADATA_ONLY = """
const { DaprClient, CommunicationProtocolEnum } = require("@dapr/dapr");
const client = new DaprClient({
  daprHost: "127.0.0.1", daprPort: process.argv[1], communicationProtocol: CommunicationProtocolEnum.GRPC,
});
client.daprClient.getClient(false)
  .then((raw) => raw.getMetadata({}))
  .then(() => console.log(JSON.stringify({ code: 0 })))
  .catch((error) => console.log(JSON.stringify({ code: error.code, message: error.rawMessage })));
"""
