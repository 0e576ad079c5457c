"""Routing rules: a rule that can never work is refused where it is written, and one that fails
on a message says why in a short line, without the message (reference 3.5)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr, JsonFormatter, ResourceError, SubscriptionError
from fastapi_dapr._subscription import parse_subscribe_answer
from fastapi_dapr.sidecar.resources import load_resources
from fastapi_dapr.testing import DaprTest, FakeClock

SECRET = "card-4111-1111-1111-1111"
PAYLOAD = {"note": SECRET * 400, "items": [1, 2]}  # about 10 KB


@pytest.mark.parametrize(
    ("match", "name", "hint"),
    [
        ("data.amount > 5", "data", "did you mean event.data?"),
        ('type == "order"', "type", "did you mean event.type?"),
        ('.source == "s"', "source", "did you mean event.source?"),
        ("amount > 5", "amount", "the only variable a rule has is event"),
        ("event.data.items.exists(i, i > 1) && i > 1", "i", "the only variable a rule has is event"),
        ('{"a": limit}["a"] == event.data.n', "limit", "the only variable a rule has is event"),
    ],
)
def test_a_rule_naming_an_unknown_variable_is_refused_at_the_decorator(
    match: str, name: str, hint: str
) -> None:
    dapr = Dapr(FastAPI())
    with pytest.raises(SubscriptionError) as refused:

        @dapr.subscribe("pubsub", "orders", match=match)
        async def on_order(event: CloudEvent) -> None: ...

    message = str(refused.value)
    assert "on_order (pubsub 'pubsub', topic 'orders')" in message
    assert f"match {match!r} uses {name!r}, which is not defined" in message
    assert hint in message


@pytest.mark.parametrize(
    "match",
    [
        "event.data.amount > 5",
        "has(event.data.amount) && int(event.data.amount) > 5",
        "event.data.items.exists(i, i > 1)",
        "event.data.items.all(i, event.data.items.exists(j, j == i))",
        "event.data.items.map(i, i * 2).filter(j, j > 2).size() > 0",
        "type(event.data) == map && type(event.id) == string && type(event.data.n) != null_type",
        'google.protobuf.Int32Value{value: 1} == 1 || .event.type == "t"',
        "",
        "   ",
    ],
)
def test_rules_that_name_only_event_types_and_macro_variables_are_accepted(match: str) -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders", match=match)
    async def on_order(event: CloudEvent) -> None: ...


def test_a_declarative_rule_naming_an_unknown_variable_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "subscription.yaml"
    path.write_text(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: big-orders}\n"
        "spec:\n  pubsubname: pubsub\n  topic: orders\n  routes:\n    rules:\n"
        "    - {match: 'event.type == \"order\"', path: /orders}\n"
        "    - {match: 'data.amount > 5', path: /big}\n"
    )
    with pytest.raises(ResourceError) as refused:
        load_resources([tmp_path], app_id="app")
    assert str(refused.value) == (
        f"{path}: Subscription 'big-orders': spec.routes.rules[1].match: 'data.amount > 5' uses 'data', "
        "which is not defined: the only variable a rule has is event; did you mean event.data?"
    )


def test_an_apps_subscribe_answer_with_such_a_rule_is_refused_naming_it() -> None:
    answer = [
        {
            "pubsubname": "pubsub",
            "topic": "orders",
            "routes": {"rules": [{"match": "data.amount > 5", "path": "/big"}], "default": "/orders"},
        }
    ]
    with pytest.raises(SubscriptionError) as refused:
        parse_subscribe_answer(json.dumps(answer).encode())
    assert str(refused.value).startswith(
        "item 0.routes.rules[0] (pubsub 'pubsub', topic 'orders'): match 'data.amount > 5' uses 'data'"
    )


def rule_app() -> FastAPI:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders", match="event.data.amount > 5", route="/big")
    async def big(event: CloudEvent) -> None: ...

    @dapr.subscribe("pubsub", "notes", match="int(event.data.note) > 5", route="/numbered")
    async def numbered(event: CloudEvent) -> None: ...

    return app


def dropped_line(caplog: pytest.LogCaptureFixture, topic: str) -> logging.LogRecord:
    (record,) = [
        r for r in caplog.records if r.name == "fastapi_dapr.delivery" and getattr(r, "topic", None) == topic
    ]
    return record


async def test_a_rule_failing_on_a_missing_field_logs_a_short_line_that_suggests_has(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dapr")
    async with DaprTest(rule_app(), clock=FakeClock()) as test:
        report = await test.publish_and_wait("pubsub", "orders", PAYLOAD)
    assert report.outcome == "invalid"
    record = dropped_line(caplog, "orders")
    line = record.getMessage()
    assert line.endswith(
        "dropped: routing failed: match 'event.data.amount > 5' failed: event.data.amount: no such field "
        "in this event; test for it first with has(event.data.amount); no dead-letter topic"
    )
    assert record.exc_info is None
    written = JsonFormatter(app_id="app").format(record)
    assert SECRET not in written
    assert len(written) < 1000


async def test_a_rule_failing_on_a_value_never_logs_the_value(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dapr")
    async with DaprTest(rule_app(), clock=FakeClock()) as test:
        report = await test.publish_and_wait("pubsub", "notes", PAYLOAD)
    assert report.outcome == "invalid"
    assert SECRET not in report.reason
    record = dropped_line(caplog, "notes")
    assert "match 'int(event.data.note) > 5' failed: a value could not be converted" in record.getMessage()
    written = JsonFormatter(app_id="app").format(record)
    assert SECRET not in written
    assert len(written) < 1000
