"""Metadata a broker holds that cannot be an HTTP header (written there by another client: a
Kafka record header, an AMQP header, a Redis entry's `metadata`, a NATS header) is left out
of the delivery's headers, and the message is delivered with the rest, in process here and
to an app behind the standalone sidecar's HTTP app channel alike (test_standalone_parts.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from fastapi_dapr import CloudEvent, Dapr
from fastapi_dapr.sidecar import delivery
from fastapi_dapr.sidecar.delivery import message_headers
from fastapi_dapr.testing import DaprTest

HOSTILE = {
    "x-injected": "a\r\nx-evil: 1",
    "x-lf": "a\nb",
    "x-nul": "a\x00b",
    "x-del": "a\x7fb",
    "bad name": "v",
    "bad:name": "v",
    "x-\u00e9": "v",
    "": "empty name",
    "x-a\nx-b": "v",  # two tokens joined by a line break: the joined names must not pass it
}
KEPT = {"x-kept": "yes", "x-tab": "a\tb", "x-utf8": "caf\u00e9"}


def test_entries_that_cannot_be_headers_are_left_out_with_one_warning_a_name(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "_warned", set())
    caplog.set_level(logging.WARNING, logger="fastapi_dapr")
    headers = message_headers({**HOSTILE, **KEPT})
    assert headers == [(b"x-kept", b"yes"), (b"x-tab", b"a\tb"), (b"x-utf8", "caf\u00e9".encode())]
    message_headers(HOSTILE)  # the same names again: no more lines (a stream of such messages)
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == len(HOSTILE)
    assert all("left out of the delivery's headers" in line for line in warned)


def test_names_the_post_sets_itself_are_not_taken_from_the_metadata() -> None:
    metadata = {"Host": "evil.example", "Expect": "100-continue", "Content-Length": "9", "x-kept": "yes"}
    assert message_headers(metadata) == [(b"x-kept", b"yes")]


def test_one_bad_entry_among_good_ones_is_found() -> None:
    # The names are checked joined by line breaks, the values joined by tabs: a name holding a
    # line break, or a value alone in being bad, must still be found.
    assert message_headers({"x-a\nx-b": "v", "ok": "1"}) == [(b"ok", b"1")]
    assert message_headers({"ok": "1", "x-v": "a\rb"}) == [(b"ok", b"1")]


async def test_a_message_with_such_metadata_is_delivered_in_process_without_them(tmp_path: Path) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders")
    seen: list[dict[str, str]] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, Any]], request: Request) -> None:
        seen.append(dict(request.headers))

    async with DaprTest(app) as test:
        broker = test.dapr.backend.running().brokers["pubsub"]
        event = b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"n":1}}'
        await broker.publish("orders", event, {**HOSTILE, **KEPT, "Host": "evil.example"})
        report = await test.wait_for_delivery(topic="orders")
    assert report.outcome == "delivered"
    (headers,) = seen
    assert headers.get("host") != "evil.example"
    assert headers["x-kept"] == "yes"
    assert headers["x-tab"] == "a\tb"
    assert not {"x-injected", "x-evil", "x-lf", "x-nul", "x-del"} & set(headers)
