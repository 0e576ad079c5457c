"""What the delivery engine says while a message is being delivered: a warning for each failed
attempt (rate-limited per subscription), a handler's traceback once per message, messages that
say what happened (data that failed validation, with the errors in `DeliveryReport.detail`),
and a dead letter the in-memory component discards."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from fastapi_dapr import DROP, RETRY, BulkEntry, BulkSubscribe, CloudEvent, Dapr, RetryPolicy
from fastapi_dapr.sidecar.settlement import LINES_PER_SECOND, Throttle
from fastapi_dapr.testing import DaprTest, FakeClock


class Order(BaseModel):
    id: str
    quantity: int


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("fastapi_dapr") and r.levelno >= level]


def retrying(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "outcome", None) == "retrying"]


async def test_each_failed_attempt_is_one_warning_and_the_traceback_comes_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fastapi_dapr")
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", retry=RetryPolicy(policy="constant", duration=2.0, max_retries=2))

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Order]) -> None:
        raise ValueError("database down")

    async with DaprTest(app, clock=FakeClock()) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
    assert report.outcome == "failed"
    first, second, given_up = lines(caplog)
    for number, record in enumerate((first, second), start=1):
        assert record.levelno == logging.WARNING
        assert record.name == "fastapi_dapr.delivery"
        text = record.getMessage()
        assert text.startswith(
            f"event {report.event_id} on pubsub='pubsub' topic='orders': attempt {number} failed"
        )
        assert "HTTP 500: " in text
        assert "on_order raised ValueError: database down" in text
        assert text.endswith("; next attempt in 2s")
        assert (record.message_id, record.attempts, record.http_status, record.retry_in) == (
            report.message_id,
            number,
            500,
            2.0,
        )
    assert given_up.levelno == logging.ERROR
    assert "given up: 3 attempts failed, the last: HTTP 500: " in given_up.getMessage()
    # The handler's traceback once, with the first line about the message; none from the handler itself.
    assert [record.exc_info is not None for record in (first, second, given_up)] == [True, False, False]
    assert first.exc_info is not None
    assert str(first.exc_info[1]) == "database down"
    assert report.reason.startswith("3 attempts failed, the last: HTTP 500: ")


async def test_a_message_given_up_at_once_shows_the_traceback_with_its_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", retry=RetryPolicy(policy="constant", duration=1.0, max_retries=0))

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Order]) -> None:
        raise KeyError("sku")

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        async with DaprTest(app, clock=FakeClock()) as test:
            report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
    (line,) = lines(caplog)
    assert report.reason == line.reason
    assert line.getMessage().endswith(f"given up: {report.reason}; no dead-letter topic")
    assert "1 attempt failed: HTTP 500: " in line.getMessage()
    assert line.exc_info is not None


async def test_a_retry_answer_says_so(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", retry=RetryPolicy(policy="constant", duration=0.5, max_retries=1))

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Order]) -> Any:
        return RETRY

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        async with DaprTest(app, clock=FakeClock()) as test:
            report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
    (attempt,) = retrying(caplog)
    assert attempt.getMessage().endswith("attempt 1 failed: the app answered RETRY; next attempt in 0.5s")
    assert attempt.exc_info is None
    assert report.reason == "2 attempts failed, the last: the app answered RETRY"


async def test_failed_attempts_are_rate_limited_per_subscription_and_the_rest_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    count = 3 * LINES_PER_SECOND
    app = FastAPI()
    # No wait between attempts, and a clock that does not move: every attempt in the same second.
    dapr = Dapr(app, app_id="orders", retry=RetryPolicy(policy="constant", duration=0.0, max_retries=1))

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Order]) -> Any:
        return RETRY

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        async with DaprTest(app, clock=FakeClock()) as test:
            for n in range(count):
                await test.dapr.publish("pubsub", "orders", {"id": f"o-{n}", "quantity": 1})
            reports = [await test.wait_for_delivery(topic="orders") for _ in range(count)]
    assert {report.outcome for report in reports} == {"failed"}
    assert len(retrying(caplog)) == LINES_PER_SECOND
    summaries = [r for r in caplog.records if hasattr(r, "suppressed")]
    assert summaries
    assert sum(r.suppressed for r in summaries) == count - LINES_PER_SECOND  # each attempt: logged or counted
    assert summaries[0].getMessage().startswith(f"... {summaries[0].suppressed} more failed attempts on ")
    assert "at most 10 lines a second per subscription" in summaries[0].getMessage()


def test_the_throttle_lets_lines_through_again_each_second() -> None:
    throttle = Throttle(2)
    assert [throttle.allow(0.0), throttle.allow(0.1), throttle.allow(0.2), throttle.allow(0.9)] == [
        True,
        True,
        False,
        False,
    ]
    assert throttle.take_held() == 2
    assert throttle.take_held() == 0
    assert throttle.allow(1.0)


async def test_data_that_fails_validation_says_so_with_its_errors(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders")
    called = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Order]) -> None:
        called.append(event)

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        async with DaprTest(app, clock=FakeClock()) as test:
            report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": "many"})
    assert called == []
    assert report.outcome == "dropped"
    assert report.reason.startswith("data failed validation for handler ")
    assert report.reason.endswith("on_order")
    assert report.detail.startswith("data.quantity: Input should be a valid integer")
    assert report.attempts[0].detail == "data failed validation"
    (line,) = lines(caplog)  # one line: the handler's own is not written beside it
    assert line.getMessage().endswith(f"dropped: {report.reason}: {report.detail}; no dead-letter topic")
    assert (line.reason, line.detail) == (report.reason, report.detail)


async def test_a_drop_is_said_once_and_a_404_as_what_it_is(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders")

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Order]) -> Any:
        return DROP

    @dapr.subscribe("pubsub", "gone")
    async def on_gone(event: CloudEvent[Order]) -> Any:
        return PlainTextResponse("no", status_code=404)

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        async with DaprTest(app, clock=FakeClock()) as test:
            dropped = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
            missing = await test.publish_and_wait("pubsub", "gone", {"id": "o-1", "quantity": 1})
    assert (dropped.reason, dropped.detail) == ("the app answered DROP", "")
    assert missing.reason == "the app answered HTTP 404 (no such route), read as DROP"
    assert "DROP (DROP)" not in caplog.text


async def test_a_dead_letter_nobody_subscribes_to_is_a_warning_once_per_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders")

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="orders-dead")
    async def on_order(event: CloudEvent[Order]) -> Any:
        return DROP

    @dapr.subscribe("pubsub", "kept", dead_letter_topic="kept-dead")
    async def on_kept(event: CloudEvent[Order]) -> Any:
        return DROP

    @dapr.subscribe("pubsub", "kept-dead")
    async def on_kept_dead(event: CloudEvent[Order]) -> None:
        return None

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        async with DaprTest(app, clock=FakeClock()) as test:
            for n in range(3):
                report = await test.publish_and_wait("pubsub", "orders", {"id": f"o-{n}", "quantity": 1})
                assert report.outcome == "dead-lettered"
            assert (await test.publish_and_wait("pubsub", "kept", {"id": "k", "quantity": 1})).outcome == (
                "dead-lettered"
            )
            assert (await test.wait_for_delivery(topic="kept-dead")).outcome == "delivered"
    (warning,) = [r for r in caplog.records if "nothing subscribes to" in r.getMessage()]
    assert warning.getMessage().startswith(
        "dead letters of topic 'orders' go to topic 'orders-dead' of pubsub 'pubsub', which nothing "
        "subscribes to: the in-memory component discards them"
    )
    assert (warning.pubsub, warning.dead_letter_topic) == ("pubsub", "orders-dead")


async def test_bulk_attempts_are_warnings_too(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", retry=RetryPolicy(policy="constant", duration=1.0, max_retries=1))

    @dapr.subscribe("pubsub", "orders", bulk=BulkSubscribe(max_messages_count=1))
    async def on_orders(entries: list[BulkEntry[Order]]) -> Any:
        raise RuntimeError("batch broke")

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        async with DaprTest(app, clock=FakeClock()) as test:
            report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
    assert report.outcome == "failed"
    (attempt,) = retrying(caplog)
    assert "bulk delivery on pubsub='pubsub' topic='orders': attempt 1 failed for 1 of 1 entries" in (
        attempt.getMessage()
    )
    assert "on_orders raised RuntimeError: batch broke" in attempt.getMessage()
    assert attempt.exc_info is not None  # the traceback once, here
    assert [r for r in caplog.records if r.exc_info is not None] == [attempt]


async def test_through_the_apps_middleware_the_handler_tells_the_engine_all_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", retry=RetryPolicy(policy="constant", duration=1.0, max_retries=1))

    @app.middleware("http")  # a BaseHTTPMiddleware: the endpoint runs in a task of its own
    async def passing(request: Request, call_next: Any) -> Any:
        return await call_next(request)

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[Order], request: Request) -> None:  # not called directly
        raise ValueError("database down")

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        async with DaprTest(app, clock=FakeClock()) as test:
            failed = await test.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 1})
            invalid = await test.publish_and_wait("pubsub", "orders", {"id": "o-2", "quantity": "x"})
    assert "on_order raised ValueError: database down" in failed.reason
    mine = [r for r in caplog.records if getattr(r, "event_id", None) == failed.event_id]
    assert [r.exc_info is not None for r in mine] == [True, False]
    assert invalid.reason.startswith("data failed validation for handler ")
    assert invalid.detail.startswith("data.quantity: ")
