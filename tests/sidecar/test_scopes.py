"""Topic scopes in the component metadata (reference 4.1, 4.2): every rule of daprd's
`IsOperationAllowed` and every way its metadata is read, on each path that checks it:
publish over HTTP, bulk publish over HTTP, `Dapr.publish` and `Dapr.publish_bulk` in code
(each refusal daprd's 403 body), subscriptions (not started, and logged) and dead letters."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr, DaprAPIError, ResourceError
from fastapi_dapr.sidecar.scopes import TopicScopes
from fastapi_dapr.testing import DaprTest, DaprTestClient

APP_ID = "app1"

# (metadata, topic, allowed) for app1. The rules are written for publishing; the same
# rules with `publishingScopes` read as `subscriptionScopes` are those of subscribing.
RULES = [
    pytest.param({}, "orders", True, id="no-scopes-any-topic"),
    # allowedTopics binds every app
    pytest.param({"allowedTopics": "orders,payments"}, "payments", True, id="allowed-lists-it"),
    pytest.param({"allowedTopics": "orders,payments"}, "refunds", False, id="allowed-lacks-it"),
    pytest.param(
        {"allowedTopics": "orders", "publishingScopes": "app1=orders,refunds"},
        "refunds",
        False,
        id="allowed-binds-even-a-granted-topic",
    ),
    pytest.param(
        {"allowedTopics": "orders", "publishingScopes": "app1=orders,refunds"},
        "orders",
        True,
        id="allowed-and-granted",
    ),
    # protectedTopics need a grant; the others stay free for an app not listed
    pytest.param({"protectedTopics": "orders"}, "orders", False, id="protected-without-grant"),
    pytest.param({"protectedTopics": "orders"}, "payments", True, id="protected-leaves-others-free"),
    pytest.param(
        {"protectedTopics": "orders", "publishingScopes": "app1=orders"},
        "orders",
        True,
        id="protected-granted",
    ),
    pytest.param(
        {"protectedTopics": "orders", "publishingScopes": "app2=orders"},
        "orders",
        False,
        id="protected-granted-to-another-app",
    ),
    # a topic both allowed and protected: allowed, then it still needs a grant
    pytest.param(
        {"allowedTopics": "orders", "protectedTopics": "orders"}, "orders", False, id="allowed-and-protected"
    ),
    pytest.param(
        {"allowedTopics": "orders", "protectedTopics": "orders", "publishingScopes": "app1=orders"},
        "orders",
        True,
        id="allowed-and-protected-granted",
    ),
    # an app listed in the scopes may use its topics only; one not listed, any
    pytest.param({"publishingScopes": "app1=orders,payments"}, "payments", True, id="listed-its-topic"),
    pytest.param({"publishingScopes": "app1=orders"}, "payments", False, id="listed-not-its-topic"),
    pytest.param({"publishingScopes": "app2=orders"}, "payments", True, id="not-listed-free"),
    # how the values are read
    pytest.param({"publishingScopes": "app1="}, "orders", False, id="listed-with-no-topics"),
    pytest.param({"publishingScopes": "app1=;app2=x"}, "x", False, id="listed-with-no-topics-then-another"),
    pytest.param(
        {"publishingScopes": "app1;app2=orders"}, "payments", True, id="entry-without-equals-ignored"
    ),
    pytest.param(
        {"publishingScopes": "app1=orders;app2=x;app1=payments"},
        "payments",
        True,
        id="listed-twice-both-lists",
    ),
    pytest.param(
        {"publishingScopes": "app1=orders;app2=x;app1=payments"}, "orders", True, id="listed-twice-first-list"
    ),
    pytest.param({"publishingScopes": "app1=orders=payments"}, "orders", True, id="second-equals-cuts"),
    pytest.param({"publishingScopes": "app1=orders=payments"}, "payments", False, id="after-second-equals"),
    pytest.param(
        {"publishingScopes": "app1=orders=payments"}, "orders=payments", False, id="equals-in-topic"
    ),
    pytest.param({"PUBLISHINGSCOPES": "app1=orders"}, "payments", False, id="scopes-name-any-case"),
    pytest.param({"AllowedTopics": "orders"}, "payments", False, id="allowed-name-any-case"),
    pytest.param({"PROTECTEDtopics": "orders"}, "orders", False, id="protected-name-any-case"),
    pytest.param({"publishingScopes": "APP1=orders"}, "payments", True, id="app-id-exact-case"),
    pytest.param({"publishingScopes": "app1=Orders"}, "orders", False, id="scoped-topic-exact-case"),
    pytest.param({"allowedTopics": "Orders"}, "orders", False, id="allowed-topic-exact-case"),
    pytest.param({"protectedTopics": "Orders"}, "orders", True, id="protected-topic-exact-case"),
    pytest.param(
        {"publishingScopes": " app1 = orders , pay ments ; app2 = x "}, "payments", True, id="spaces-removed"
    ),
    pytest.param({"allowedTopics": "orders ,\tpayments"}, "payments", True, id="tabs-removed"),
    # daprd keeps the line break: "\napp1" would not be app1, which would be free
    pytest.param({"publishingScopes": "app2=x;\napp1=orders\n"}, "payments", False, id="line-breaks-removed"),
    pytest.param({"allowedTopics": "", "publishingScopes": ""}, "orders", True, id="empty-values-no-setting"),
    pytest.param({"protectedTopics": ""}, "orders", True, id="empty-protected-no-setting"),
    pytest.param({"allowedTopics": " "}, "orders", False, id="allowed-of-spaces-allows-nothing"),
    pytest.param({"allowedTopics": ","}, "orders", False, id="allowed-of-commas-allows-nothing"),
    pytest.param({"allowedTopics": "orders,,payments,"}, "payments", True, id="empty-items-ignored"),
    pytest.param({"publishingScopes": "app1=orders/eu"}, "orders/eu", True, id="topic-with-slash"),
    pytest.param({"publishingScopes": "app1=orders/eu"}, "orders", False, id="topic-prefix-not-enough"),
]


def for_subscribing(metadata: dict[str, str]) -> dict[str, str]:
    """The same rule for subscriptions: `publishingScopes` (in any case) read as `subscriptionScopes`."""
    return {re.sub("(?i)publishing", "subscription", name): value for name, value in metadata.items()}


def write_component(tmp_path: Path, metadata: dict[str, str], name: str = "ps") -> None:
    items = "".join(f"  - {{name: {key}, value: {json.dumps(value)}}}\n" for key, value in metadata.items())
    (tmp_path / "pubsub.yaml").write_text(
        f"apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}}}\n"
        "spec:\n  type: pubsub.in-memory\n  version: v1\n  metadata:\n" + (items or "    []\n")
    )


def forbidden_body(topic: str, pubsub: str = "ps") -> dict[str, Any]:
    message = f"topic {topic} is not allowed for app id {APP_ID}"
    return {
        "errorCode": "ERR_PUBSUB_FORBIDDEN",
        "message": message,
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                "description": message,
                "owner": "",
                "resource_name": pubsub,
                "resource_type": "pubsub",
            },
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": "dapr.io",
                "metadata": {"error": message, "topic": topic},
                "reason": "DAPR_PUBSUB_FORBIDDEN",
            },
        ],
    }


ENTRIES = [{"entryId": "1", "event": {"n": 1}, "contentType": "application/json"}]


@pytest.mark.parametrize(("metadata", "topic", "allowed"), RULES)
def test_is_operation_allowed(metadata: dict[str, str], topic: str, allowed: bool) -> None:
    assert TopicScopes.from_metadata(metadata, APP_ID).may_publish(topic) is allowed
    assert TopicScopes.from_metadata(for_subscribing(metadata), APP_ID).may_subscribe(topic) is allowed


@pytest.mark.parametrize(("metadata", "topic", "allowed"), RULES)
async def test_publishing_obeys_the_rule_on_every_path(
    tmp_path: Path, metadata: dict[str, str], topic: str, allowed: bool
) -> None:
    write_component(tmp_path, metadata)
    app = FastAPI()
    dapr = Dapr(app, app_id=APP_ID, resources_path=tmp_path)
    async with DaprTest(app) as test:
        answers = [
            await test.client.post(f"/v1.0/publish/ps/{topic}", json={"n": 1}),
            await test.client.post(f"/v1.0-alpha1/publish/bulk/ps/{topic}", json=ENTRIES),
            await test.client.post(f"/v1.0/publish/bulk/ps/{topic}", json=ENTRIES),
        ]
        raised: list[DaprAPIError | None] = []
        calls = (
            lambda: dapr.publish("ps", topic, {"n": 1}),
            lambda: dapr.publish_bulk("ps", topic, [{"n": 1}]),
        )
        for call in calls:
            try:
                assert not await call()  # None from publish, no failed entry from publish_bulk
            except DaprAPIError as exc:
                raised.append(exc)
            else:
                raised.append(None)
    if allowed:
        assert [answer.status_code for answer in answers] == [204, 204, 204]
        assert raised == [None, None]
        return
    body = forbidden_body(topic)
    for answer in answers:
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == body
    for exc in raised:
        assert exc is not None
        assert exc.status_code == 403
        assert exc.to_json() == body


def test_the_403_body_is_daprds_to_the_byte(tmp_path: Path) -> None:
    # The concrete body of reference 1.3, with Go's key order and separators.
    write_component(tmp_path, {"publishingScopes": "app1=payments"}, name="mypubsub")
    app = FastAPI()
    Dapr(app, app_id=APP_ID, resources_path=tmp_path)
    expected = (
        b'{"errorCode":"ERR_PUBSUB_FORBIDDEN","message":"topic orders is not allowed for app id app1",'
        b'"details":[{"@type":"type.googleapis.com/google.rpc.ResourceInfo",'
        b'"description":"topic orders is not allowed for app id app1","owner":"",'
        b'"resource_name":"mypubsub","resource_type":"pubsub"},'
        b'{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"dapr.io",'
        b'"metadata":{"error":"topic orders is not allowed for app id app1","topic":"orders"},'
        b'"reason":"DAPR_PUBSUB_FORBIDDEN"}]}'
    )
    with DaprTestClient(app) as client:
        assert client.post("/v1.0/publish/mypubsub/orders", json={}).content == expected
        assert client.post("/v1.0-alpha1/publish/bulk/mypubsub/orders", json=ENTRIES).content == expected


def refusal_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fastapi_dapr" and " not started: " in r.getMessage()]


@pytest.mark.parametrize(("metadata", "topic", "allowed"), RULES)
async def test_subscribing_obeys_the_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, metadata: dict[str, str], topic: str, allowed: bool
) -> None:
    write_component(tmp_path, for_subscribing(metadata))
    app = FastAPI()
    dapr = Dapr(app, app_id=APP_ID, resources_path=tmp_path)
    seen: list[Any] = []

    @dapr.subscribe("ps", topic)
    async def handler(event: CloudEvent[Any]) -> None:
        seen.append(event.data)

    # What another app, allowed to publish there, would put on the broker.
    event = {"specversion": "1.0", "id": "e1", "source": "app2", "type": "t", "data": {"n": 1}}
    with caplog.at_level(logging.INFO, logger="fastapi_dapr"):
        async with DaprTest(app) as test:
            broker = dapr.backend.running().brokers["ps"]
            await broker.publish(topic, json.dumps(event).encode(), {})
            if allowed:
                report = await test.wait_for_delivery(topic=topic)
            else:
                # The in-memory broker keeps a message only for a subscriber: none took it.
                assert broker.queued() == 0
    if allowed:
        assert report.outcome == "delivered"
        assert seen == [{"n": 1}]
        assert refusal_records(caplog) == []
        return
    assert seen == []
    assert test.reports == []
    (record,) = refusal_records(caplog)
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"subscription to {topic} on pubsub ps not started: topic {topic} is not allowed for app id app1"
    )


async def test_publishing_scopes_do_not_bind_subscriptions_nor_the_reverse(tmp_path: Path) -> None:
    write_component(tmp_path, {"publishingScopes": "app1=orders", "subscriptionScopes": "app1=payments"})
    app = FastAPI()
    dapr = Dapr(app, app_id=APP_ID, resources_path=tmp_path)
    seen: list[str] = []

    @dapr.subscribe("ps", "payments")
    async def on_payment(event: CloudEvent[Any]) -> None:
        seen.append("payments")

    @dapr.subscribe("ps", "orders")
    async def on_order(event: CloudEvent[Any]) -> None:
        seen.append("orders")

    async with DaprTest(app) as test:
        # app1 may publish orders (not subscribe) and subscribe to payments (not publish).
        assert (await test.client.post("/v1.0/publish/ps/orders", json={})).status_code == 204
        answer = await test.client.post("/v1.0/publish/ps/payments", json={})
        assert answer.json() == forbidden_body("payments")
        broker = dapr.backend.running().brokers["ps"]
        event = {"specversion": "1.0", "id": "e1", "source": "app2", "type": "t", "data": {}}
        await broker.publish("payments", json.dumps(event).encode(), {})
        assert (await test.wait_for_delivery(topic="payments")).outcome == "delivered"
    assert seen == ["payments"]


def test_envelope_errors_come_before_scopes(tmp_path: Path) -> None:
    write_component(tmp_path, {"allowedTopics": "orders"})
    app = FastAPI()
    Dapr(app, app_id=APP_ID, resources_path=tmp_path)
    with DaprTestClient(app) as client:
        answer = client.post(
            "/v1.0/publish/ps/other", content=b"[1]", headers={"content-type": "application/cloudevents+json"}
        )
        assert answer.json()["errorCode"] == "ERR_PUBSUB_CLOUD_EVENTS_SER"
        # Bulk: the entries are read first, then the scopes of the whole request.
        bad = [{"entryId": "1", "event": {"n": 1}}]  # no contentType
        answer = client.post("/v1.0-alpha1/publish/bulk/ps/other", json=bad)
        assert (answer.status_code, answer.json()["errorCode"]) == (400, "ERR_PUBSUB_EVENTS_SER")


@pytest.mark.parametrize(
    ("metadata", "dead_lettered"),
    [
        pytest.param({}, True, id="no-scopes"),
        pytest.param({"publishingScopes": "app1=orders,dead"}, True, id="granted"),
        pytest.param({"publishingScopes": "app1=orders"}, False, id="listed-without-it"),
        pytest.param({"allowedTopics": "orders"}, False, id="not-allowed"),
        pytest.param({"protectedTopics": "dead"}, False, id="protected"),
        pytest.param(
            {"protectedTopics": "dead", "publishingScopes": "app1=orders,dead"}, True, id="protected-granted"
        ),
    ],
)
async def test_scopes_apply_to_dead_letters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, metadata: dict[str, str], dead_lettered: bool
) -> None:
    # Publishing scopes decide the dead-letter publish; subscribing is granted to both topics.
    write_component(tmp_path, {**metadata, "subscriptionScopes": "app1=orders,dead"})
    app = FastAPI()
    dapr = Dapr(app, app_id=APP_ID, resources_path=tmp_path)
    seen: list[str] = []

    @dapr.subscribe("ps", "orders", dead_letter_topic="dead")
    async def on_order(event: CloudEvent[Any]) -> str:
        seen.append("orders")
        return "DROP"

    @dapr.subscribe("ps", "dead")
    async def on_dead(event: CloudEvent[Any]) -> None:
        seen.append("dead")

    with caplog.at_level(logging.ERROR, logger="fastapi_dapr"):
        async with DaprTest(app) as test:
            report = await test.publish_and_wait("ps", "orders", {"n": 1})
            if dead_lettered:
                assert (await test.wait_for_delivery(topic="dead")).outcome == "delivered"
    refused = [r for r in caplog.records if r.getMessage().startswith("dead-letter publish to dead refused")]
    if dead_lettered:
        assert report.outcome == "dead-lettered"
        assert seen == ["orders", "dead"]
        assert refused == []
        return
    assert report.outcome == "failed"  # the DROP could not be dead-lettered
    assert seen == ["orders"]
    (record,) = refused
    assert record.levelno == logging.ERROR
    assert (
        record.getMessage()
        == "dead-letter publish to dead refused: topic dead is not allowed for app id app1"
    )


@pytest.mark.parametrize(
    "name", ["allowedTopics", "protectedTopics", "publishingScopes", "subscriptionScopes"]
)
async def test_a_scope_given_in_two_cases_refuses_the_component(tmp_path: Path, name: str) -> None:
    # daprd would take one of the two at random.
    write_component(tmp_path, {name: "orders", name.upper(): "app1=orders"})
    app = FastAPI()
    Dapr(app, app_id=APP_ID, resources_path=tmp_path)
    with pytest.raises(ResourceError) as refused:
        async with DaprTest(app):
            pass
    assert str(refused.value) == (
        f"{tmp_path / 'pubsub.yaml'}: Component 'ps': spec: {name} is given more than once "
        f"({name.upper()!r} and {name!r}): metadata names are matched case-insensitively"
    )


async def test_a_refused_component_with_ignore_errors_is_skipped(tmp_path: Path) -> None:
    write_component(tmp_path, {"allowedTopics": "a", "ALLOWEDTOPICS": "b"})
    with (tmp_path / "pubsub.yaml").open("a") as file:
        file.write("  ignoreErrors: true\n")
    app = FastAPI()
    Dapr(app, app_id=APP_ID, resources_path=tmp_path)
    async with DaprTest(app) as test:
        answer = await test.client.post("/v1.0/publish/ps/a", json={})
    assert answer.json()["errorCode"] == "ERR_PUBSUB_NOT_CONFIGURED"
