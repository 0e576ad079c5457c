"""Topic scopes in the component metadata: every rule of reference 4.2, and its 403."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr
from fastapi_dapr._scopes import TopicScopes
from fastapi_dapr.testing import DaprTestClient


@pytest.mark.parametrize(
    ("metadata", "topic", "allowed"),
    [
        ({}, "any", True),
        # allowedTopics limits every app
        ({"allowedTopics": "a,b"}, "a", True),
        ({"allowedTopics": "a,b"}, "c", False),
        # an app that is not listed is free, but for protected topics
        ({"publishingScopes": "other=x"}, "t", True),
        ({"protectedTopics": "secret"}, "secret", False),
        ({"protectedTopics": "secret"}, "open", True),
        # a listed app may use only its topics, protected or not
        ({"publishingScopes": "me=t1,t2"}, "t1", True),
        ({"publishingScopes": "me=t1,t2"}, "t3", False),
        ({"publishingScopes": "me=secret", "protectedTopics": "secret"}, "secret", True),
        # `me=` with nothing after it: no topic at all
        ({"publishingScopes": "me="}, "t", False),
        # names case-insensitive, spaces removed, matching exact and case-sensitive
        ({"PublishingScopes": "me = t1 , t2 ; other=x"}, "t2", True),
        ({"publishingScopes": "me=T1"}, "t1", False),
        # allowedTopics first, even for a granted topic
        ({"allowedTopics": "a", "publishingScopes": "me=b"}, "b", False),
    ],
)
def test_is_operation_allowed(metadata: dict[str, str], topic: str, allowed: bool) -> None:
    assert TopicScopes.from_metadata(metadata, "me").may_publish(topic) is allowed
    subscription = {
        k.replace("publishing", "subscription").replace("Publishing", "Subscription"): v
        for k, v in metadata.items()
    }
    assert TopicScopes.from_metadata(subscription, "me").may_subscribe(topic) is allowed


def scoped_app(tmp_path: Path, metadata: str) -> tuple[FastAPI, list[str]]:
    (tmp_path / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: ps}\n"
        f"spec:\n  type: pubsub.in-memory\n  version: v1\n  metadata:\n{metadata}"
    )
    app = FastAPI()
    dapr = Dapr(app, app_id="app1", resources_path=tmp_path)
    seen: list[str] = []

    @dapr.subscribe("ps", "orders", dead_letter_topic="dead")
    async def on_order(event: CloudEvent) -> str:
        seen.append("orders")
        return "DROP"

    @dapr.subscribe("ps", "hidden")
    async def on_hidden(event: CloudEvent) -> None:
        seen.append("hidden")

    return app, seen


def test_forbidden_publish_is_daprds_403(tmp_path: Path) -> None:
    app, _ = scoped_app(tmp_path, "  - {name: publishingScopes, value: app1=orders}\n")
    with DaprTestClient(app) as client:
        assert client.post("/v1.0/publish/ps/orders", json={}).status_code == 204
        answer = client.post("/v1.0/publish/ps/other", json={})
    assert answer.status_code == 403
    message = "topic other is not allowed for app id app1"
    assert answer.json() == {
        "errorCode": "ERR_PUBSUB_FORBIDDEN",
        "message": message,
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                "description": message,
                "owner": "",
                "resource_name": "ps",
                "resource_type": "pubsub",
            },
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": "dapr.io",
                "metadata": {"error": message, "topic": "other"},
                "reason": "DAPR_PUBSUB_FORBIDDEN",
            },
        ],
    }


def test_envelope_errors_come_before_scopes(tmp_path: Path) -> None:
    app, _ = scoped_app(tmp_path, "  - {name: allowedTopics, value: orders}\n")
    with DaprTestClient(app) as client:
        answer = client.post(
            "/v1.0/publish/ps/other", content=b"[1]", headers={"content-type": "application/cloudevents+json"}
        )
    assert answer.json()["errorCode"] == "ERR_PUBSUB_CLOUD_EVENTS_SER"


def test_forbidden_subscription_is_not_consumed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app, _ = scoped_app(tmp_path, "  - {name: subscriptionScopes, value: 'app1=orders,dead'}\n")
    with caplog.at_level(logging.ERROR, logger="fastapi_dapr"), DaprTestClient(app) as client:
        topics = [s["topic"] for s in client.get("/v1.0/metadata").json()["subscriptions"]]
        runtime = client.dapr._running()
        assert [w.route.topic for w in runtime.workers] == ["orders"]
    assert "hidden" in topics  # still the app's subscription, not started
    assert "subscription to hidden on pubsub ps not started" in caplog.text


def test_scopes_apply_to_dead_letters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app, seen = scoped_app(tmp_path, "  - {name: publishingScopes, value: app1=orders}\n")
    with caplog.at_level(logging.ERROR, logger="fastapi_dapr"), DaprTestClient(app) as client:
        report = client.publish_and_wait("ps", "orders", {"n": 1})
    assert report.outcome == "failed"  # the DROP could not be dead-lettered
    assert "dead-letter publish to dead refused" in caplog.text
    assert seen == ["orders"]
