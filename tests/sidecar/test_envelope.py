"""Golden envelopes: what `POST /v1.0/publish` stores, field by field against reference 1.4-1.7."""

from __future__ import annotations

import base64
import datetime
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.requests import Request

from fastapi_dapr import CloudEvent, Dapr
from fastapi_dapr.testing import DaprTestClient

from ..daprd_wire import go_json

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$")


@pytest.fixture
def client() -> Iterator[DaprTestClient]:
    app = FastAPI()
    Dapr(app, app_id="checkout")
    with DaprTestClient(app) as client:
        yield client


def stored(
    client: DaprTestClient,
    topic: str,
    body: bytes | str,
    *,
    content_type: str | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Publish through the HTTP API; return the message the broker stored (data, metadata)."""
    runtime = client.dapr.backend.running()
    broker = runtime.brokers["pubsub"]
    consumer = client.portal.call(broker.subscribe, topic)  # type: ignore[union-attr]
    sent = dict(headers or {})
    if content_type is not None:
        sent["content-type"] = content_type
    answer = client.post(f"/v1.0/publish/pubsub/{topic}{query}", content=body, headers=sent)
    assert answer.status_code == 204, answer.text
    assert answer.content == b""
    (delivery,) = client.portal.call(consumer.receive, 10)  # type: ignore[union-attr]
    client.portal.call(consumer.close)  # type: ignore[union-attr]
    return delivery.message.data, dict(delivery.message.metadata)


def envelope(client: DaprTestClient, body: bytes | str, **kwargs: Any) -> dict[str, Any]:
    data, _ = stored(client, "golden", body, **kwargs)
    # Go's json.Marshal: sorted keys, compact.
    parsed: dict[str, Any] = json.loads(data)
    assert data == go_json(parsed)
    return parsed


def assert_daprd_fields(event: dict[str, Any], *, content_type: str, traceparent: str = "") -> None:
    uuid.UUID(event["id"], version=4)
    assert event["specversion"] == "1.0"
    assert event["datacontenttype"] == content_type
    assert event["source"] == "checkout"  # the app id
    assert event["type"] == "com.dapr.event.sent"
    assert event["topic"] == "golden"
    assert event["pubsubname"] == "pubsub"
    assert event["traceid"] == traceparent
    assert event["traceparent"] == traceparent
    assert event["tracestate"] == ""
    assert RFC3339.match(event["time"]), event["time"]


def test_json_body(client: DaprTestClient) -> None:
    event = envelope(
        client,
        b'{"a": 1, "big": 12345678901234567890, "f": 1.5}',
        content_type="application/json",
        headers={"traceparent": TRACEPARENT},
    )
    assert_daprd_fields(event, content_type="application/json", traceparent=TRACEPARENT)
    assert event["data"] == {"a": 1, "big": 12345678901234567890, "f": 1.5}
    assert set(event) == {
        "id",
        "specversion",
        "datacontenttype",
        "source",
        "type",
        "topic",
        "pubsubname",
        "traceid",
        "traceparent",
        "tracestate",
        "time",
        "data",
    }


def test_json_with_parameters_and_trailing_data(client: DaprTestClient) -> None:
    # Go's decoder reads the first JSON value and ignores what follows.
    event = envelope(client, b"[1, 2] trailing", content_type="application/json; charset=utf-8")
    assert event["data"] == [1, 2]
    assert event["datacontenttype"] == "application/json; charset=utf-8"


def test_invalid_json_becomes_a_string(client: DaprTestClient) -> None:
    event = envelope(client, b"{not json", content_type="application/json")
    assert event["data"] == "{not json"


def test_no_content_type_is_text_plain(client: DaprTestClient) -> None:
    data, _ = stored(client, "golden", b"hello")
    event = json.loads(data)
    assert_daprd_fields(event, content_type="text/plain")
    assert event["data"] == "hello"


def test_curl_default_form_content_type_is_a_string(client: DaprTestClient) -> None:
    event = envelope(client, b'{"a":1}', content_type="application/x-www-form-urlencoded")
    assert event["data"] == '{"a":1}'
    assert event["datacontenttype"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "text/csv; charset=utf-8"])
def test_text_types_are_strings(client: DaprTestClient, content_type: str) -> None:
    event = envelope(client, "<a>é</a>".encode(), content_type=content_type)
    assert event["data"] == "<a>é</a>"


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/cloudevents+protobuf"])
def test_binary_is_data_base64(client: DaprTestClient, content_type: str) -> None:
    payload = bytes(range(256))
    event = envelope(client, payload, content_type=content_type)
    assert "data" not in event
    assert base64.b64decode(event["data_base64"]) == payload
    assert_daprd_fields(event, content_type=content_type)


def test_invalid_utf8_text_is_replaced(client: DaprTestClient) -> None:
    event = envelope(client, b"ok\xff", content_type="text/plain")
    assert event["data"] == "ok\ufffd"


def test_html_characters_are_escaped_like_go(client: DaprTestClient) -> None:
    data, _ = stored(client, "golden", b'{"h":"<a&b>"}', content_type="application/json")
    assert b'"h":"\\u003ca\\u0026b\\u003e"' in data


def test_cloudevent_overrides_case_insensitive(client: DaprTestClient) -> None:
    query = (
        "?metadata.cloudevent.id=my-id&metadata.CloudEvent.Source=my-src"
        "&metadata.cloudevent.type=my.type&metadata.cloudevent.subject=sub"
        f"&metadata.cloudevent.traceparent={TRACEPARENT}&metadata.cloudevent.tracestate=k%3Dv"
    )
    event = envelope(client, b"{}", content_type="application/json", query=query)
    assert event["id"] == "my-id"
    assert event["source"] == "my-src"
    assert event["type"] == "my.type"
    assert event["subject"] == "sub"
    assert event["traceid"] == event["traceparent"] == TRACEPARENT
    assert event["tracestate"] == "k=v"


def test_user_cloudevent_passes_through_with_daprd_additions(client: DaprTestClient) -> None:
    user = {
        "specversion": "1.0",
        "id": "u-1",
        "source": "shop",
        "type": "order.created",
        "time": "2020-01-01T00:00:00Z",
        "topic": "spoofed",
        "pubsubname": "spoofed",
        "data": {"x": 1},
        "ext": "kept",
    }
    event = envelope(
        client,
        json.dumps(user),
        content_type="application/cloudevents+json",
        headers={"traceparent": TRACEPARENT},
        query="?metadata.cloudevent.id=ignored",
    )
    assert event["id"] == "u-1"  # overrides do not apply to a user CloudEvent
    assert event["source"] == "shop"
    assert event["type"] == "order.created"
    assert event["time"] == "2020-01-01T00:00:00Z"
    assert event["topic"] == "golden"  # always overwritten
    assert event["pubsubname"] == "pubsub"
    assert event["ext"] == "kept"
    assert event["traceid"] == event["traceparent"] == TRACEPARENT
    assert event["tracestate"] == ""
    assert "datacontenttype" not in event


def test_user_cloudevent_defaults(client: DaprTestClient) -> None:
    event = envelope(
        client,
        b'{"data": 1, "source": null, "traceparent": "user"}',
        content_type="application/cloudevents+json; charset=utf-8",
    )
    assert event["source"] == "Dapr"
    assert event["type"] == "com.dapr.event.sent"
    assert event["specversion"] == "1.0"
    assert "id" not in event  # daprd does not give a user CloudEvent an id
    assert RFC3339.match(event["time"])
    # no traceid: both trace fields are set from the request (the user's is replaced)
    assert event["traceid"] == ""
    assert event["traceparent"] == ""


def test_user_cloudevent_with_traceid_keeps_its_trace(client: DaprTestClient) -> None:
    event = envelope(
        client,
        b'{"traceid": "t", "traceparent": "p", "tracestate": "s"}',
        content_type="application/cloudevents+json",
        headers={"traceparent": TRACEPARENT},
    )
    assert (event["traceid"], event["traceparent"], event["tracestate"]) == ("t", "p", "s")


def test_raw_payload_is_stored_as_sent(client: DaprTestClient) -> None:
    data, metadata = stored(
        client, "golden", b"\x00raw bytes", content_type="application/json", query="?metadata.rawPayload=true"
    )
    assert data == b"\x00raw bytes"
    assert metadata == {"rawPayload": "true"}


@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "True"])
def test_raw_payload_accepts_go_booleans(client: DaprTestClient, value: str) -> None:
    data, _ = stored(client, "golden", b"x", query=f"?metadata.rawPayload={value}")
    assert data == b"x"


def test_raw_payload_key_is_case_sensitive(client: DaprTestClient) -> None:
    event = envelope(client, b"x", query="?metadata.rawpayload=true")
    assert event["data"] == "x"


@pytest.mark.parametrize(
    ("query", "seconds"),
    [("?metadata.ttlInSeconds=120", 120), ("?metadata.TTL=90s", 90), ("?metadata.ttl=1m30s", 90)],
)
def test_ttl_sets_expiration(client: DaprTestClient, query: str, seconds: int) -> None:
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    data, metadata = stored(client, "golden", b"{}", content_type="application/json", query=query)
    after = datetime.datetime.now(datetime.timezone.utc)
    event = json.loads(data)
    assert event["expiration"].endswith("Z")
    expiration = datetime.datetime.fromisoformat(event["expiration"].replace("Z", "+00:00"))
    assert before + datetime.timedelta(seconds=seconds) <= expiration
    assert expiration <= after + datetime.timedelta(seconds=seconds)
    assert len(metadata) == 1  # the metadata travels with the message too


def test_ttl_applies_to_user_cloudevents(client: DaprTestClient) -> None:
    event = envelope(
        client, b'{"id": "1"}', content_type="application/cloudevents+json", query="?metadata.ttlInSeconds=5"
    )
    assert RFC3339.match(event["expiration"])


def test_metadata_travels_with_the_message(client: DaprTestClient) -> None:
    _, metadata = stored(
        client,
        "golden",
        b"{}",
        content_type="application/json",
        query="?metadata.foo=bar&metadata.foo=second&metadata.Tenant=t1&other=x",
    )
    assert metadata == {"foo": "bar", "Tenant": "t1"}  # first value of each; only metadata.*


def test_metadata_reaches_the_subscriber_as_headers() -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout")
    seen: dict[str, str] = {}

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent, request: Request) -> None:
        seen.update(request.headers)

    with DaprTestClient(app) as client:
        answer = client.post(
            "/v1.0/publish/pubsub/orders?metadata.foo=bar&metadata.X-Tenant=acme",
            json={"a": 1},
            headers={"traceparent": TRACEPARENT, "tracestate": "k=v"},
        )
        assert answer.status_code == 204
        assert client.wait_for_delivery(topic="orders").outcome == "delivered"
    assert seen["foo"] == "bar"
    assert seen["x-tenant"] == "acme"
    assert seen["pubsubname"] == "pubsub"
    assert seen["content-type"] == "application/cloudevents+json"
    assert seen["traceparent"] == TRACEPARENT
    assert seen["tracestate"] == "k=v"
    assert "topic" not in seen


def test_delivery_without_trace_gets_the_zero_traceparent() -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout")
    seen: list[str | None] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(request: Request) -> None:
        seen.append(request.headers.get("traceparent"))

    with DaprTestClient(app) as client:
        client.publish_and_wait("pubsub", "orders", {"a": 1})
    assert seen == ["00-00000000000000000000000000000000-0000000000000000-00"]


def test_json_that_go_would_not_parse_as_a_number_is_kept_as_text(client: DaprTestClient) -> None:
    # NaN and Infinity are not JSON, and 1e400 does not fit a float: never write them back.
    for body in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e400}'):
        event = envelope(client, body, content_type="application/json")
        assert event["data"] == body.decode()


def test_lone_surrogates_become_replacement_characters(client: DaprTestClient) -> None:
    data, _ = stored(client, "golden", b'{"name": "\\ud800x"}', content_type="application/json")
    assert json.loads(data)["data"] == {"name": "\ufffdx"}
