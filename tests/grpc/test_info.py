"""GetSecret, GetBulkSecret, GetMetadata, SetMetadata and Shutdown over gRPC: the official Python
SDK, sync and `dapr.aio`, against the embedded app and the standalone sidecar, answering the
HTTP API's facts and daprd's gRPC errors; and the metadata's translation in process."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastapi_dapr.sidecar.grpc_api.info import metadata_response

from ..sidecar.test_standalone import running
from .kit import SECRETS, GrpcApp, GrpcSidecar, run_sdk, secret_store

# A gRPC error as JSON; the raw GetMetadataResponse (the SDK's wrapper drops most of it) as JSON.
HELPERS = """
    import json
    import grpc
    from google.protobuf import empty_pb2, json_format

    def failed(error):
        return {"code": error.code().name, "message": error.details()}

    def raw_metadata(client):
        answer = client._stub.GetMetadata(empty_pb2.Empty())
        return json_format.MessageToDict(answer, preserving_proto_field_name=True)
"""

SYNC = (
    HELPERS
    + """
    from dapr.clients import DaprClient
    out = {}
    with DaprClient() as client:
        out["secret"] = dict(client.get_secret("localsecretstore", "password").secret)
        bulk = client.get_bulk_secret("localsecretstore").secrets
        out["bulk"] = {name: dict(values) for name, values in bulk.items()}
        for name, store in (("unknown_store", "nostore"),):
            try:
                client.get_secret(store, "password")
            except grpc.RpcError as error:
                out[name] = failed(error)
        client.set_metadata("fromPy", "sync")
        from dapr.proto.runtime.v1 import metadata_pb2  # the SDK refuses an empty key itself
        client._stub.SetMetadata(metadata_pb2.SetMetadataRequest(key="", value="nothing"))
        metadata = client.get_metadata()
        out["id"] = metadata.application_id
        out["components"] = sorted([c.name, c.type] for c in metadata.registered_components)
        out["extended"] = metadata.extended_metadata
        out["raw"] = raw_metadata(client)
    print(json.dumps(out))
"""
)

AIO = (
    HELPERS
    + """
    import asyncio
    from dapr.aio.clients import DaprClient

    async def main():
        out = {}
        async with DaprClient() as client:
            out["secret"] = dict((await client.get_secret("localsecretstore", "user")).secret)
            bulk = (await client.get_bulk_secret("localsecretstore")).secrets
            out["bulk"] = sorted(bulk)
            try:
                await client.get_bulk_secret("nostore")
            except grpc.RpcError as error:
                out["unknown_store"] = failed(error)
            await client.set_metadata("fromAio", "aio")
            out["extended"] = (await client.get_metadata()).extended_metadata
        return out

    print(json.dumps(asyncio.run(main())))
"""
)


def check_raw_metadata(raw: dict[str, Any], http: dict[str, Any]) -> None:
    """GetMetadata answers the facts of GET /v1.0/metadata, in the gRPC message's fields."""
    assert (raw["id"], raw["runtime_version"]) == (http["id"], http["runtimeVersion"])
    components = [(c["name"], c["type"], c["version"]) for c in raw["registered_components"]]
    assert components == [(c["name"], c["type"], c["version"]) for c in http["components"]]
    assert raw["extended_metadata"] == http["extended"]
    subscriptions = [
        (s["pubsub_name"], s["topic"], [r["path"] for r in s["rules"]["rules"]], s["type"])
        for s in raw["subscriptions"]
    ]
    assert subscriptions == [
        (s["pubsubname"], s["topic"], [r["path"] for r in s["rules"]], s["type"])
        for s in http["subscriptions"]
    ]
    connection, http_connection = raw["app_connection_properties"], http["appConnectionProperties"]
    assert connection["protocol"] == http_connection["protocol"]
    assert connection.get("channel_address", "") == http_connection["channelAddress"]
    assert raw["actor_runtime"]["runtime_status"] == http["actorRuntime"]["runtimeStatus"]


@pytest.mark.process
async def test_the_sdk_reads_secrets_and_metadata_from_the_embedded_app(tmp_path: Path) -> None:
    app = GrpcApp(resources=secret_store(tmp_path / "resources"), DAPR_API_TOKEN="api-secret")
    async with running(app):
        ports = {"http_port": app.port, "grpc_port": app.grpc_port, "token": "api-secret"}
        result = await run_sdk(SYNC, **ports)
        aio = await run_sdk(AIO, **ports)
        async with httpx.AsyncClient(base_url=app.url, headers={"dapr-api-token": "api-secret"}) as client:
            http = (await client.get("/v1.0/metadata")).json()

    assert result["secret"] == {"password": "s3cret"}
    assert result["bulk"] == {key: {key: value} for key, value in SECRETS.items()}
    # daprd's codes: an unknown store InvalidArgument (over HTTP, its 401).
    message = "failed finding secret store with key nostore"
    assert result["unknown_store"] == {"code": "INVALID_ARGUMENT", "message": message}
    assert result["id"] == "grpcapp"
    assert ["pubsub", "pubsub.in-memory"] in result["components"]
    assert result["extended"]["fromPy"] == "sync"
    assert "" not in result["extended"]
    raw = result["raw"]
    assert {(s["pubsub_name"], s["topic"]) for s in raw["subscriptions"]} >= {
        ("pubsub", "orders"),
        ("pubsub", "raw"),
        ("pubsub", "flaky"),
    }
    assert {s["type"] for s in raw["subscriptions"]} == {"PROGRAMMATIC"}
    # What the HTTP API answered after both SDK runs: the aio run's key is new there.
    assert raw["extended_metadata"] == {k: v for k, v in http["extended"].items() if k != "fromAio"}
    check_raw_metadata({**raw, "extended_metadata": http["extended"]}, http)

    assert aio["secret"] == {"user": "admin"}
    assert aio["bulk"] == sorted(SECRETS)
    assert aio["unknown_store"] == {"code": "INVALID_ARGUMENT", "message": message}
    assert (aio["extended"]["fromPy"], aio["extended"]["fromAio"]) == ("sync", "aio")


STANDALONE = (
    HELPERS
    + """
    from dapr.clients import DaprClient
    out = {}
    with DaprClient() as client:
        try:
            client.get_secret("any", "key")
        except grpc.RpcError as error:
            out["not_configured"] = failed(error)
        half = "x" * (600 * 1024)
        client.set_metadata("first", half)
        try:
            client.set_metadata("second", half)  # the two together are over the 1 MB limit
        except grpc.RpcError as error:
            out["too_large"] = failed(error)
        metadata = client.get_metadata()
        out["id"] = metadata.application_id
        out["extended"] = sorted(metadata.extended_metadata)
        out["raw"] = raw_metadata(client)
        client.shutdown()
    print(json.dumps(out))
"""
)


@pytest.mark.process
async def test_the_standalone_sidecar_answers_metadata_and_stops_on_shutdown() -> None:
    sidecar = GrpcSidecar("alone", None, "--dapr-http-max-request-size", "1")
    async with running(sidecar):
        result = await run_sdk(STANDALONE, http_port=sidecar.port, grpc_port=sidecar.grpc_port)
        status = await sidecar.wait(15)  # the SDK's shutdown() stopped it
        output = sidecar.text
    assert status == 0
    assert "shutdown requested through the API" in output
    assert result["not_configured"] == {
        "code": "FAILED_PRECONDITION",
        "message": "secret store is not configured",
    }
    assert result["too_large"]["code"] == "RESOURCE_EXHAUSTED"
    assert "may hold at most 1048576 bytes" in result["too_large"]["message"]
    assert result["id"] == "alone"
    assert "first" in result["extended"]
    assert "second" not in result["extended"]
    assert result["raw"]["extended_metadata"]["runtime"] == "fastapi-dapr standalone"


SHUTDOWN = """
    import asyncio, json
    from dapr.aio.clients import DaprClient

    async def main():
        async with DaprClient() as client:
            await client.shutdown()
        return "asked"

    print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.process
async def test_shutdown_stops_the_embedded_app_under_uvicorn() -> None:
    app = GrpcApp()
    async with running(app):
        assert await run_sdk(SHUTDOWN, http_port=app.port, grpc_port=app.grpc_port) == "asked"
        status = await app.wait(15)  # it exits by itself
        output = app.text
    # As after `kill -TERM`: uvicorn (0.29 and later) raises the signal again once it has stopped.
    assert status in (0, -signal.SIGTERM)
    assert "shutdown requested through the API" in output
    assert "Finished server process" in output


# -- the metadata's translation, in process ---------------------------------------------------


def test_the_metadata_body_becomes_daprds_message() -> None:
    body = {
        "id": "me",
        "runtimeVersion": "1.2.3",
        "enabledFeatures": ["a"],
        "components": [
            {"name": "pubsub", "type": "pubsub.in-memory", "version": "v1", "capabilities": ["TTL"]}
        ],
        "extended": {"k": "v"},
        "subscriptions": [
            {
                "pubsubname": "pubsub",
                "topic": "orders",
                "metadata": {"rawPayload": "true"},
                "rules": [{"match": "event.type == 'x'", "path": "/x"}, {"match": "", "path": "/all"}],
                "deadLetterTopic": "dead",
                "type": "DECLARATIVE",
            },
            {"pubsubname": "pubsub", "topic": "s", "rules": [], "type": "STREAMING"},
            {"pubsubname": "pubsub", "topic": "odd", "rules": [], "type": "SOMETHING"},
        ],
        "httpEndpoints": [{"name": "billing"}],
        "appConnectionProperties": {
            "port": 3000,
            "protocol": "http",
            "channelAddress": "127.0.0.1",
            "health": {"healthCheckPath": "/healthz", "healthProbeInterval": "5s", "healthThreshold": 3},
        },
        "actorRuntime": {"runtimeStatus": "DISABLED", "hostReady": False},
    }
    message = metadata_response(body)
    assert (message.id, message.runtime_version, list(message.enabled_features)) == ("me", "1.2.3", ["a"])
    (component,) = message.registered_components
    assert (component.name, component.type, component.version, list(component.capabilities)) == (
        "pubsub",
        "pubsub.in-memory",
        "v1",
        ["TTL"],
    )
    assert dict(message.extended_metadata) == {"k": "v"}
    first, streaming, odd = message.subscriptions
    assert (first.pubsub_name, first.topic, first.dead_letter_topic) == ("pubsub", "orders", "dead")
    assert dict(first.metadata) == {"rawPayload": "true"}
    assert [(r.match, r.path) for r in first.rules.rules] == [("event.type == 'x'", "/x"), ("", "/all")]
    assert (first.type, streaming.type, odd.type) == (1, 3, 0)  # DECLARATIVE, STREAMING, UNKNOWN
    assert [e.name for e in message.http_endpoints] == ["billing"]
    connection = message.app_connection_properties
    assert (connection.port, connection.protocol, connection.channel_address) == (3000, "http", "127.0.0.1")
    assert (connection.health.health_check_path, connection.health.health_threshold) == ("/healthz", 3)
    assert (message.actor_runtime.runtime_status, message.actor_runtime.host_ready) == (1, False)
