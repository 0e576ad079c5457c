"""Structured log lines: every message the app does not take (dropped, dead-lettered, given
up, expired, unmatched, invalid) is logged on `fastapi_dapr.delivery` with its fields in
`extra=`, and `JsonFormatter` writes them out."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_dapr import DROP, RETRY, CloudEvent, Dapr, JsonFormatter, RetryPolicy
from fastapi_dapr.testing import DaprTest, FakeClock

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FIELDS = ("event_id", "message_id", "pubsub", "topic", "path", "outcome", "reason", "attempts")


def records(caplog: pytest.LogCaptureFixture, outcome: str | None = None) -> list[logging.LogRecord]:
    """The lines of `fastapi_dapr.delivery` that settle a message (or those of `outcome`)."""
    return [
        record
        for record in caplog.records
        if record.name == "fastapi_dapr.delivery"
        and (record.outcome == outcome if outcome else record.outcome != "retrying")
    ]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: getattr(record, key) for key in (*FIELDS, "dead_letter_topic", "traceparent")}


def make_app(tmp_path: Path | None = None, scopes: str | None = None) -> FastAPI:
    resources = None
    if tmp_path is not None and scopes is not None:
        resources = tmp_path / "resources"
        resources.mkdir()
        (resources / "pubsub.yaml").write_text(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
            "spec:\n  type: pubsub.in-memory\n  version: v1\n  metadata:\n"
            f"  - {{name: publishingScopes, value: '{scopes}'}}\n"
        )
    app = FastAPI()
    dapr = Dapr(
        app,
        app_id="orders",
        resources_path=resources,
        retry=RetryPolicy(policy="constant", duration=1.0, max_retries=1),
    )

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead")
    async def on_order(event: CloudEvent[dict[str, int]]) -> Any:
        return DROP if event.data["n"] == 1 else RETRY

    @dapr.subscribe("pubsub", "plain")
    async def on_plain(event: CloudEvent[dict[str, int]]) -> Any:
        return DROP if event.data["n"] == 1 else RETRY

    @dapr.subscribe("pubsub", "picky", match="int(event.data.n) == 1", route="/picky")
    async def on_picky(event: CloudEvent[dict[str, int]]) -> None:
        return None

    @dapr.subscribe("pubsub", "dead")
    async def on_dead(event: CloudEvent[dict[str, int]]) -> None:
        return None

    return app


async def test_dead_lettered_and_dropped_and_given_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dapr")
    app = make_app()
    async with DaprTest(app, clock=FakeClock()) as test:
        answer = await test.client.post(
            "/v1.0/publish/pubsub/orders", json={"n": 1}, headers={"traceparent": TRACEPARENT}
        )
        assert answer.status_code == 204
        assert (await test.wait_for_delivery(topic="orders")).outcome == "dead-lettered"
        dropped = await test.publish_and_wait("pubsub", "plain", {"n": 1})
        given_up = await test.publish_and_wait("pubsub", "plain", {"n": 2})
    assert (dropped.outcome, given_up.outcome) == ("dropped", "failed")
    dead, drop, failed = records(caplog)

    assert dead.levelno == logging.WARNING
    assert fields(dead) == {
        "event_id": dead.event_id,
        "message_id": dead.message_id,
        "pubsub": "pubsub",
        "topic": "orders",
        "path": "/events/pubsub/orders",
        "outcome": "dead-lettered",
        "reason": "the app answered DROP",
        "attempts": 1,
        "dead_letter_topic": "dead",
        "traceparent": TRACEPARENT,
    }
    assert dead.event_id
    assert dead.message_id

    assert drop.levelno == logging.WARNING
    assert (drop.outcome, drop.topic, drop.attempts, drop.dead_letter_topic) == ("dropped", "plain", 1, None)
    assert drop.event_id == dropped.event_id
    assert drop.traceparent == ""

    assert failed.levelno == logging.ERROR
    assert (failed.outcome, failed.attempts) == ("failed", 2)
    assert failed.reason == "2 attempts failed, the last: the app answered RETRY"
    assert failed.event_id == given_up.event_id
    (retried,) = records(caplog, "retrying")  # the first attempt, before its retry
    assert (retried.levelno, retried.event_id, retried.attempts) == (logging.WARNING, given_up.event_id, 1)
    assert retried.getMessage().endswith("attempt 1 failed: the app answered RETRY; next attempt in 1s")


async def test_expired_unmatched_and_invalid(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dapr")
    app = make_app()
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    async with DaprTest(app, clock=FakeClock()) as test:
        expired = {
            "specversion": "1.0",
            "id": "old-1",
            "source": "s",
            "type": "t",
            "data": {"n": 1},
            "expiration": past.isoformat().replace("+00:00", "Z"),
        }
        answer = await test.client.post(
            "/v1.0/publish/pubsub/plain",
            content=json.dumps(expired),
            headers={"content-type": "application/cloudevents+json"},
        )
        assert answer.status_code == 204
        assert (await test.wait_for_delivery(topic="plain")).outcome == "expired"
        assert (await test.publish_and_wait("pubsub", "picky", {"n": 2})).outcome == "unmatched"
        broker = test.dapr.backend.running().brokers["pubsub"]
        await broker.publish("plain", b"not json", {})
        assert (await test.wait_for_delivery(topic="plain")).outcome == "invalid"
    old, unmatched, invalid = records(caplog)
    assert (old.outcome, old.event_id, old.topic, old.attempts) == ("expired", "old-1", "plain", 0)
    assert old.reason.startswith("expired at ")
    assert (unmatched.outcome, unmatched.topic, unmatched.path) == ("unmatched", "picky", None)
    assert unmatched.reason == "no routing rule matches and there is no default route"
    assert (invalid.outcome, invalid.event_id, invalid.traceparent) == ("invalid", None, "")
    assert invalid.reason.startswith("the message is not a JSON CloudEvent")
    assert all(record.levelno == logging.WARNING for record in (old, unmatched, invalid))


async def test_a_refused_dead_letter_is_not_settled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dapr")
    app = make_app(tmp_path, scopes="orders=orders,plain,picky")  # may not publish to `dead`
    async with DaprTest(app, clock=FakeClock()) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert report.outcome == "failed"
    refused = next(r for r in caplog.records if r.getMessage().startswith("dead-letter publish to dead"))
    assert (refused.pubsub, refused.topic, refused.dead_letter_topic) == ("pubsub", "orders", "dead")
    assert refused.message_id == report.message_id
    (settled,) = records(caplog)
    assert settled.levelno == logging.ERROR
    assert settled.outcome == "failed"
    assert settled.reason == "the app answered DROP; and the dead-letter publish to dead failed"
    assert settled.dead_letter_topic == "dead"


def test_json_formatter_writes_the_fields() -> None:
    record = logging.LogRecord(
        "fastapi_dapr.delivery", logging.WARNING, "x.py", 1, "event %s: %s", ("e1", "why"), None
    )
    record.__dict__.update({"event_id": "e1", "attempts": 3, "path": None, "when": datetime.date(2024, 1, 2)})
    line = json.loads(JsonFormatter(app_id="orders").format(record))
    assert line.pop("time").endswith("Z")
    assert line == {
        "level": "warning",
        "type": "log",
        "msg": "event e1: why",
        "scope": "fastapi_dapr.delivery",
        "app_id": "orders",
        "event_id": "e1",
        "attempts": 3,
        "path": None,
        "when": "2024-01-02",  # not JSON: its str()
    }


def test_json_formatter_writes_an_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("fastapi_dapr", logging.ERROR, "x.py", 1, "failed", (), exc_info)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "error"
    assert "app_id" not in line
    assert "ValueError: boom" in line["exception"]
    assert "\n" not in JsonFormatter().format(record)  # one line per record
