"""Publishing over gRPC with the official SDK (sync and `dapr.aio`), embedded and standalone:
PublishEvent's JSON, text, raw payloads, TTLs, CloudEvents and trace, BulkPublishEvent's
failed entries, and daprd's errors (code, message, ErrorInfo, ResourceInfo) in the SDK."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from fastapi_dapr.sidecar.grpc_api.publish import call_trace

from ..sidecar.test_standalone import App, running
from .kit import GrpcApp, GrpcSidecar, run_sdk

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
RAW = b"raw \x00\xff payload"

# One of each kind of PublishEvent, from the sync client or the aio one ({client}).
PUBLISH = """
    import asyncio, json
    {imports}

    CLOUDEVENT = {{
        "specversion": "1.0", "id": "ce-1", "source": "me", "type": "my.type",
        "datacontenttype": "application/json", "data": {{"n": 4}},
    }}

    async def main():
        {open_client}
            await call(client.publish_event(
                "pubsub", "orders", json.dumps({{"n": 1}}), data_content_type="application/json",
                metadata=(("traceparent", "{traceparent}"), ("tracestate", "k=v")),
            ))
            await call(client.publish_event("pubsub", "orders", "plain words"))
            await call(client.publish_event(
                "pubsub", "orders", json.dumps({{"n": 3}}), data_content_type="application/json",
                publish_metadata={{"ttlInSeconds": "60", "cloudevent.id": "own-id"}},
            ))
            await call(client.publish_event(
                "pubsub", "orders", json.dumps(CLOUDEVENT), data_content_type="application/cloudevents+json",
            ))
            raw = {{"rawPayload": "true"}}
            await call(client.publish_event("pubsub", "{raw_topic}", {raw!r}, publish_metadata=raw))
        print(json.dumps("published"))

    async def call(result):
        if asyncio.iscoroutine(result):
            await result

    asyncio.run(main())
"""

SYNC = {"imports": "from dapr.clients import DaprClient", "open_client": "with DaprClient() as client:"}
AIO = {
    "imports": "from dapr.aio.clients import DaprClient",
    "open_client": "async with DaprClient() as client:",
}


def publish_script(flavour: dict[str, str], raw_topic: str) -> str:
    return PUBLISH.format(**flavour, traceparent=TRACEPARENT, raw=RAW, raw_topic=raw_topic)


async def received(url: str, count: int, kind: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        answer = await client.get("/received", params={"count": count, "kind": kind})
    records: list[dict[str, Any]] = answer.json()["received"]
    return records


def check_orders(records: list[dict[str, Any]]) -> None:
    """The four CloudEvents PUBLISH sent to orders, as daprd delivers them."""
    events = {
        str(record["body"].get("data")): record["body"] for record in records if record["kind"] == "orders"
    }
    json_event = events["{'n': 1}"]
    assert json_event["datacontenttype"] == "application/json"
    assert json_event["traceparent"] == TRACEPARENT
    assert json_event["tracestate"] == "k=v"
    assert json_event["source"] in ("grpcapp", "standalone")
    text = events["plain words"]
    assert text["datacontenttype"] == "text/plain"  # an empty content type is text/plain
    assert "expiration" not in text
    ttl = events["{'n': 3}"]
    assert ttl["id"] == "own-id"
    assert "expiration" in ttl
    passthrough = events["{'n': 4}"]
    assert (passthrough["id"], passthrough["source"], passthrough["type"]) == ("ce-1", "me", "my.type")
    assert passthrough["topic"] == "orders"
    assert passthrough["pubsubname"] == "pubsub"


@pytest.mark.process
@pytest.mark.parametrize("flavour", [SYNC, AIO], ids=["sync", "aio"])
async def test_the_sdk_publishes_to_the_embedded_app(flavour: dict[str, str]) -> None:
    app = GrpcApp()
    async with running(app):
        script = publish_script(flavour, "raw")
        assert await run_sdk(script, http_port=app.port, grpc_port=app.grpc_port) == "published"
        check_orders(await received(app.url, 4, "orders"))
        (raw,) = await received(app.url, 1, "raw")
        # Stored as sent, without an envelope: daprd's made-up one on delivery carries the bytes.
        event = json.loads(raw["body"])
        assert event["datacontenttype"] == "application/octet-stream"
        assert base64.b64decode(event["data_base64"]) == RAW


@pytest.mark.process
async def test_the_sdk_publishes_through_the_standalone_sidecar() -> None:
    app = App("plain_app")
    sidecar = GrpcSidecar("standalone", app.port)
    async with running(app, sidecar):
        script = publish_script(AIO, "unread")  # plain_app has no raw subscription
        assert await run_sdk(script, http_port=sidecar.port, grpc_port=sidecar.grpc_port) == "published"
        check_orders(await received(app.url, 4, "orders"))


BULK = """
    import json
    from dapr.clients import BulkPublishEntry, DaprClient
    from dapr.proto import api_v1
    with DaprClient() as client:
        answer = client.publish_events(
            "pubsub",
            "orders",
            [
                BulkPublishEntry(json.dumps({"bulk": 1}), entry_id="one", content_type="application/json"),
                BulkPublishEntry("two", entry_id="two", metadata={"ttlInSeconds": "soon"}),
                BulkPublishEntry("three", entry_id="three"),
            ],
        )
        empty = client.publish_events("pubsub", "orders", [])  # nothing to publish: no error
        # The Alpha1 RPC, the SDK's fallback, is the same.
        entries = [api_v1.BulkPublishRequestEntry(entry_id="four", event=b"four", content_type="text/plain")]
        alpha = client._stub.BulkPublishEventAlpha1(
            api_v1.BulkPublishRequest(pubsub_name="pubsub", topic="orders", entries=entries)
        )
        print(json.dumps({
            "failed": [[e.entry_id, e.error] for e in answer.failed_entries],
            "empty": len(empty.failed_entries),
            "alpha": len(alpha.failedEntries),
        }))
"""


@pytest.mark.process
async def test_a_bulk_publish_answers_its_failed_entries() -> None:
    app = GrpcApp()
    async with running(app):
        answers = await run_sdk(BULK, http_port=app.port, grpc_port=app.grpc_port)
        error = "failed deserializing metadata. Error: ttl value must be a valid integer: actual is 'soon'"
        assert answers == {"failed": [["two", error]], "empty": 0, "alpha": 0}
        events = [record["body"] for record in await received(app.url, 3, "orders")]
        assert sorted(str(event["data"]) for event in events) == ["four", "three", "{'bulk': 1}"]


# Each call's DaprGrpcError, as the SDK reads it: code, message, reason and details.
ERRORS = """
    import json
    import grpc
    from dapr.clients import BulkPublishEntry, DaprClient
    from dapr.clients.exceptions import DaprGrpcError
    from dapr.proto import api_v1

    def error(call):
        try:
            call()
        except grpc.RpcError as exc:
            exc = exc if isinstance(exc, DaprGrpcError) else DaprGrpcError(exc)
            return json.loads(exc.json())
        return None

    BAD_RAW, META = {"rawPayload": "yes"}, {"a": "1"}
    with DaprClient() as client:
        print(json.dumps({
            "unknown": error(lambda: client.publish_event("nope", "orders", "x", publish_metadata=META)),
            "no_name": error(lambda: client.publish_event("", "orders", "x")),
            "no_topic": error(lambda: client.publish_event("pubsub", "", "x")),
            "raw": error(lambda: client.publish_event("pubsub", "t", "x", publish_metadata=BAD_RAW)),
            "cloudevent": error(lambda: client.publish_event(
                "pubsub", "t", "{not json", data_content_type="application/cloudevents+json")),
            "oversize": error(lambda: client.publish_event("pubsub", "t", b"x" * (5 * 1024 * 1024))),
            "bulk_unknown": error(lambda: client.publish_events("nope", "t", ["x"])),
            "bulk_duplicate": error(lambda: client.publish_events(
                "pubsub", "t", [BulkPublishEntry("a", entry_id="1"), BulkPublishEntry("b", entry_id="1")])),
            "bulk_raw": error(lambda: client.publish_events("pubsub", "t", ["a"], publish_metadata=BAD_RAW)),
            "bulk_no_id": error(lambda: client._stub.BulkPublishEvent(api_v1.BulkPublishRequest(
                pubsub_name="pubsub", topic="t", entries=[api_v1.BulkPublishRequestEntry(event=b"x")]))),
        }))
"""


def check_errors(errors: dict[str, Any]) -> None:
    unknown = errors["unknown"]
    assert unknown["status_code"] == "INVALID_ARGUMENT"
    assert unknown["message"] == "pubsub nope is not found"
    assert unknown["error_code"] == "DAPR_PUBSUB_NOT_FOUND"
    assert unknown["details"]["error_info"] == {  # no metadata: daprd's gRPC API gives it none
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "DAPR_PUBSUB_NOT_FOUND",
        "domain": "dapr.io",
    }
    assert unknown["details"]["resource_info"] is None
    no_name = errors["no_name"]
    assert (no_name["status_code"], no_name["message"]) == ("INVALID_ARGUMENT", "pubsub name is empty")
    assert no_name["error_code"] == "DAPR_PUBSUB_NAME_EMPTY"
    assert no_name["details"]["resource_info"] == {
        "@type": "type.googleapis.com/google.rpc.ResourceInfo",
        "resource_type": "pubsub",
        "description": "pubsub name is empty",
    }
    no_topic = errors["no_topic"]
    assert (no_topic["status_code"], no_topic["message"]) == (
        "INVALID_ARGUMENT",
        "topic is empty in pubsub pubsub",
    )
    assert no_topic["details"]["resource_info"]["resource_name"] == "pubsub"
    raw = errors["raw"]
    assert raw["status_code"] == "INVALID_ARGUMENT"
    assert raw["message"] == (
        "failed deserializing metadata. Error: rawPayload value must be a valid boolean: actual is 'yes'"
    )
    assert raw["error_code"] == "DAPR_PUBSUB_METADATA_DESERIALIZATION"
    assert raw["details"]["error_info"]["metadata"] == {"rawPayload": "yes"}
    cloudevent = errors["cloudevent"]
    assert (cloudevent["status_code"], cloudevent["message"]) == (
        "INVALID_ARGUMENT",
        "cannot create cloudevent",
    )
    assert cloudevent["error_code"] == "DAPR_PUBSUB_CLOUD_EVENT_CREATION"
    oversize = errors["oversize"]
    assert oversize["status_code"] == "RESOURCE_EXHAUSTED"  # the server's message limit, as daprd's
    assert errors["bulk_unknown"]["error_code"] == "DAPR_PUBSUB_NOT_FOUND"
    duplicate = errors["bulk_duplicate"]
    assert duplicate["status_code"] == "INVALID_ARGUMENT"
    assert duplicate["message"] == (
        "error marshaling events to bytes for topic t pubsub pubsub. "
        "error: entryId is duplicated or not present for entry: "
        "the entry at index 1 has entryId '1', as the entry at index 0 does"
    )
    assert duplicate["error_code"] == "DAPR_PUBSUB_MARSHAL_EVENTS"
    assert errors["bulk_raw"]["error_code"] == "DAPR_PUBSUB_METADATA_DESERIALIZATION"
    assert errors["bulk_no_id"]["message"] == (
        "error marshaling events to bytes for topic t pubsub pubsub. "
        "error: entryId is duplicated or not present for entry: the entry at index 0 has no entryId"
    )


@pytest.mark.process
async def test_publish_errors_are_daprds_in_the_sdk_embedded() -> None:
    app = GrpcApp()
    async with running(app):
        check_errors(await run_sdk(ERRORS, http_port=app.port, grpc_port=app.grpc_port))


@pytest.mark.process
async def test_publish_errors_are_daprds_in_the_sdk_standalone() -> None:
    sidecar = GrpcSidecar("standalone", None)  # its built-in in-memory pubsub named pubsub
    async with running(sidecar):
        check_errors(await run_sdk(ERRORS, http_port=sidecar.port, grpc_port=sidecar.grpc_port))


class Call:
    def __init__(self, *metadata: tuple[str, str | bytes]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.metadata


def test_the_trace_of_a_call_is_read_as_daprd_reads_it() -> None:
    assert call_trace(Call()) == ("", "")
    assert call_trace(Call(("traceparent", TRACEPARENT), ("tracestate", "k=v"))) == (TRACEPARENT, "k=v")
    assert call_trace(Call(("traceparent", "00-bad"), ("tracestate", "k=v"))) == ("", "")
    # grpc-trace-bin first, as daprd (OpenCensus' binary form has no tracestate).
    trace_id, span_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), bytes.fromhex("00f067aa0ba902b7")
    binary = b"\0" + b"\0" + trace_id + b"\1" + span_id + b"\2\1"
    expected = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    both = Call(("traceparent", TRACEPARENT), ("tracestate", "k=v"), ("grpc-trace-bin", binary))
    assert call_trace(both) == (expected, "")
    assert call_trace(Call(("grpc-trace-bin", b"\1garbage"), ("traceparent", TRACEPARENT))) == ("", "")
    assert call_trace(Call(("grpc-trace-bin", b"\0\0" + trace_id))) == ("", "")  # no span id: none
