"""The delivery engine: daprd's classification of the app's answers, retries, dead letters,
expiry and routing (reference 3.1-3.6), with the real in-memory broker."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from fastapi_dapr import DROP, SUCCESS, BulkEntry, BulkSubscribe, CloudEvent, Dapr, RetryPolicy
from fastapi_dapr.testing import DaprTest, DaprTestClient, FakeClock

QUICK = RetryPolicy(policy="constant", duration=1.0, max_retries=2)


def app_answering(status: int, body: bytes, *, dead_letter: bool = True) -> tuple[FastAPI, list[Any]]:
    """An app whose `orders` handler always answers `status` and `body`."""
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", retry=QUICK)
    dead: list[Any] = []

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead" if dead_letter else None)
    async def on_order(event: CloudEvent) -> Response:
        return Response(body, status_code=status, media_type="application/json")

    @dapr.subscribe("pubsub", "dead")
    async def on_dead(event: CloudEvent) -> None:
        dead.append(event.data)

    return app, dead


SUCCESS_ROWS = [
    (200, b""),
    (204, b""),
    (200, b"not json"),
    (200, b'"ok"'),
    (200, b'{"status":1}'),
    (200, b'{"status":""}'),
    (200, b"{}"),
    (200, b"null"),
    (200, b'{"status":"SUCCESS"}'),
    (201, b'{"Status":"SUCCESS"}'),
    (200, b'{"status":"SUCCESS"} trailing'),
]
RETRY_ROWS = [
    (200, b'{"status":"RETRY"}'),
    (200, b'{"STATUS":"RETRY"}'),
    (200, b'{"status":"success"}'),  # status matching is case-sensitive
    (200, b'{"status":"retry"}'),
    (200, b'{"status":"drop"}'),
    (200, b'{"status":"whatever"}'),
    (500, b""),
    (503, b'{"status":"SUCCESS"}'),  # the body of a non-2xx is not read
    (400, b""),
    (409, b""),
    (302, b""),
]
DROP_ROWS = [
    (200, b'{"status":"DROP"}'),
    (404, b""),
    (404, b'{"status":"SUCCESS"}'),
]


@pytest.mark.parametrize(("status", "body"), SUCCESS_ROWS)
def test_answers_read_as_success(status: int, body: bytes) -> None:
    app, dead = app_answering(status, body)
    with DaprTestClient(app, clock=FakeClock()) as client:
        report = client.publish_and_wait("pubsub", "orders", {"n": 1})
    assert report.outcome == "delivered"
    assert report.status is SUCCESS
    assert len(report.attempts) == 1
    assert dead == []


@pytest.mark.parametrize(("status", "body"), RETRY_ROWS)
def test_answers_read_as_retry_then_dead_letter(status: int, body: bytes) -> None:
    app, dead = app_answering(status, body)
    clock = FakeClock()
    with DaprTestClient(app, clock=clock) as client:
        report = client.publish_and_wait("pubsub", "orders", {"n": 1})
        assert client.wait_for_delivery(topic="dead").outcome == "delivered"
    assert report.outcome == "dead-lettered"
    assert len(report.attempts) == 3  # the first attempt and max_retries=2
    assert clock.sleeps == [1.0, 1.0]
    assert dead == [{"n": 1}]


@pytest.mark.parametrize(("status", "body"), DROP_ROWS)
def test_answers_read_as_drop_go_straight_to_dead_letter(status: int, body: bytes) -> None:
    app, dead = app_answering(status, body)
    clock = FakeClock()
    with DaprTestClient(app, clock=clock) as client:
        report = client.publish_and_wait("pubsub", "orders", {"n": 1})
        client.wait_for_delivery(topic="dead")
    assert report.outcome == "dead-lettered"
    assert report.status is DROP
    assert len(report.attempts) == 1
    assert clock.sleeps == []
    assert dead == [{"n": 1}]


def test_drop_without_dead_letter_topic_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = app_answering(200, b'{"status":"DROP"}', dead_letter=False)
    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"), DaprTestClient(app) as client:
        report = client.publish_and_wait("pubsub", "orders", {"n": 1})
    assert report.outcome == "dropped"
    assert report.event_id is not None
    assert report.event_id in caplog.text
    assert "dropped" in caplog.text


def test_exhausted_retries_without_dead_letter_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = app_answering(500, b"", dead_letter=False)
    with (
        caplog.at_level(logging.ERROR, logger="fastapi_dapr"),
        DaprTestClient(app, clock=FakeClock()) as client,
    ):
        report = client.publish_and_wait("pubsub", "orders", {"n": 1})
    assert report.outcome == "failed"
    assert [a.http_status for a in report.attempts] == [500, 500, 500]
    assert report.event_id is not None
    assert report.event_id in caplog.text
    assert "given up" in caplog.text


def test_matching_status_codes_limit_retries() -> None:
    app = FastAPI()
    dapr = Dapr(
        app,
        retry=RetryPolicy(policy="constant", duration=1, max_retries=5, http_status_codes=frozenset({503})),
    )
    answers = iter([503, 503, 500, 200])

    @dapr.subscribe("pubsub", "orders")
    async def on_order() -> Response:
        return Response(status_code=next(answers))

    with DaprTestClient(app, clock=FakeClock()) as client:
        report = client.publish_and_wait("pubsub", "orders", 1)
    assert [a.http_status for a in report.attempts] == [503, 503, 500]  # 500 is not retried
    assert report.outcome == "failed"


def test_retry_answer_is_retried_whatever_the_matching() -> None:
    app = FastAPI()
    dapr = Dapr(
        app,
        retry=RetryPolicy(policy="constant", duration=1, max_retries=5, http_status_codes=frozenset({503})),
    )
    calls: list[int] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order() -> Any:
        calls.append(1)
        return "RETRY" if len(calls) < 3 else None

    with DaprTestClient(app, clock=FakeClock()) as client:
        report = client.publish_and_wait("pubsub", "orders", 1)
    assert report.outcome == "delivered"
    assert len(report.attempts) == 3


def test_default_retry_is_exponential_and_bounded() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders")
    async def on_order() -> str:
        return "RETRY"

    clock = FakeClock()
    with DaprTestClient(app, clock=clock) as client:
        report = client.publish_and_wait("pubsub", "orders", 1)
    assert report.outcome == "failed"
    assert len(report.attempts) == 11
    assert len(clock.sleeps) == 10
    for retry, slept in enumerate(clock.sleeps, start=1):
        nominal = min(0.5 * 1.5 ** (retry - 1), 15.0)
        assert nominal * 0.5 <= slept <= nominal * 1.5


def test_handler_exception_is_retried_then_dead_lettered() -> None:
    app = FastAPI()
    dapr = Dapr(app, retry=QUICK)
    attempts: list[int] = []

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead")
    async def on_order(event: CloudEvent) -> None:
        attempts.append(1)
        raise RuntimeError("boom")

    @dapr.subscribe("pubsub", "dead")
    async def on_dead(event: CloudEvent) -> None: ...

    with DaprTestClient(app, clock=FakeClock()) as client:
        report = client.publish_and_wait("pubsub", "orders", {"n": 2})
        dead = client.wait_for_delivery(topic="dead")
    assert report.outcome == "dead-lettered"
    assert len(attempts) == 3
    assert dead.event_id == report.event_id  # the original message, not a new envelope


def test_dead_letter_keeps_the_original_bytes_and_metadata() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    seen: list[tuple[dict[str, Any], dict[str, str]]] = []

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead")
    async def on_order() -> Any:
        return DROP

    @dapr.subscribe("pubsub", "dead")
    async def on_dead(request: Request) -> None:
        seen.append((json.loads(await request.body()), dict(request.headers)))

    with DaprTestClient(app) as client:
        client.post("/v1.0/publish/pubsub/orders?metadata.tenant=t1", json={"n": 3})
        first = client.wait_for_delivery(topic="orders")
        client.wait_for_delivery(topic="dead")
    ((event, headers),) = seen
    assert event["id"] == first.event_id
    assert event["topic"] == "orders"  # the original envelope, untouched
    assert event["data"] == {"n": 3}
    assert headers["tenant"] == "t1"
    assert headers["pubsubname"] == "pubsub"


def test_app_crash_before_answering_is_a_500_and_retried() -> None:
    app = FastAPI()
    dapr = Dapr(app, retry=QUICK)
    calls: list[int] = []

    @app.middleware("http")
    async def broken(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/events/") and len(calls) < 1:
            calls.append(1)
            raise ConnectionError("the app fell over before answering")
        return await call_next(request)

    @dapr.subscribe("pubsub", "orders")
    async def on_order() -> None: ...

    with DaprTestClient(app, clock=FakeClock(), raise_server_exceptions=False) as client:
        report = client.publish_and_wait("pubsub", "orders", 1)
    # Starlette's error middleware answers 500, as a server would to daprd.
    assert report.outcome == "delivered"
    assert [a.http_status for a in report.attempts] == [500, 200]


async def test_an_asgi_app_that_never_answers_is_unreachable() -> None:
    from fastapi_dapr.sidecar.asgi import AppUnreachable, call_app

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def crashing(scope: Any, receive: Any, send: Any) -> None:
        raise OSError("socket gone")

    with pytest.raises(AppUnreachable, match="without sending a response"):
        await call_app(silent, "POST", "/x", [], b"")
    with pytest.raises(AppUnreachable, match="OSError: socket gone"):
        await call_app(crashing, "POST", "/x", [], b"")


# -- expiry ---------------------------------------------------------------------


def test_expired_messages_are_not_delivered(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    dapr = Dapr(app)
    calls: list[int] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order() -> None:
        calls.append(1)

    @dapr.subscribe("pubsub", "with-dlq", dead_letter_topic="dead")
    async def on_other() -> None:
        calls.append(1)

    @dapr.subscribe("pubsub", "dead")
    async def on_dead() -> None: ...

    past = {"specversion": "1.0", "id": "old", "expiration": "2001-01-01T00:00:00Z", "data": 1}
    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"), DaprTestClient(app) as client:
        report = client.publish_and_wait(
            "pubsub", "orders", past, content_type="application/cloudevents+json"
        )
        assert report.outcome == "expired"
        assert report.attempts == ()
        assert "old" in caplog.text
        assert "expired" in caplog.text
        report = client.publish_and_wait(
            "pubsub", "with-dlq", past, content_type="application/cloudevents+json"
        )
        assert report.outcome == "dead-lettered"
        assert client.wait_for_delivery(topic="dead").event_id == "old"
        # A long TTL does not expire (one under a second is refused: tests/sidecar/test_publish_api.py).
        assert client.publish_and_wait("pubsub", "orders", 1, metadata={"ttlInSeconds": "60"}).outcome == (
            "delivered"
        )
    assert calls == [1]


def test_unparseable_expiration_is_not_expired() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders")
    async def on_order() -> None: ...

    event = {"specversion": "1.0", "id": "x", "expiration": "tomorrow"}
    with DaprTestClient(app) as client:
        report = client.publish_and_wait(
            "pubsub", "orders", event, content_type="application/cloudevents+json"
        )
    assert report.outcome == "delivered"


# -- routing ------------------------------------------------------------------


def routing_app() -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    dapr = Dapr(app, retry=QUICK)
    hits: list[str] = []

    @dapr.subscribe("pubsub", "widgets", match='event.type == "big"', priority=0)
    async def big(event: CloudEvent) -> None:
        hits.append("big")

    @dapr.subscribe(
        "pubsub", "widgets", match="event.data.size > 10", priority=1, dead_letter_topic="widgets-dead"
    )
    async def large(event: CloudEvent) -> None:
        hits.append("large")

    @dapr.subscribe("pubsub", "widgets")
    async def other(event: CloudEvent) -> None:
        hits.append("other")

    @dapr.subscribe("pubsub", "widgets-dead")
    async def dead(event: CloudEvent) -> None:
        hits.append("dead")

    return app, hits


def test_rules_in_order_then_default() -> None:
    app, hits = routing_app()
    big = {"specversion": "1.0", "id": "1", "type": "big", "data": {"size": 100}}
    with DaprTestClient(app) as client:
        report = client.publish_and_wait(
            "pubsub", "widgets", big, content_type="application/cloudevents+json"
        )
        assert report.path == "/events/pubsub/widgets"
        # JSON numbers are CEL doubles, compared with the int literal 10 as cel-go does.
        report = client.publish_and_wait("pubsub", "widgets", {"size": 11})
        assert report.path == "/events/pubsub/widgets/large"
        report = client.publish_and_wait("pubsub", "widgets", {"size": 1})
        assert report.path == "/events/pubsub/widgets/other"
    assert hits == ["big", "large", "other"]


def test_rule_that_errors_is_dead_lettered_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    app, hits = routing_app()
    with (
        caplog.at_level(logging.WARNING, logger="fastapi_dapr"),
        DaprTestClient(app, clock=FakeClock()) as client,
    ):
        # event.data has no `size`: the second rule cannot be evaluated (a CEL error, not "false").
        report = client.publish_and_wait("pubsub", "widgets", {"colour": "red"})
        client.wait_for_delivery(topic="widgets-dead")
    assert report.outcome == "dead-lettered"
    assert report.attempts == ()
    assert "routing failed" in report.reason
    assert hits == ["dead"]
    assert "routing failed" in caplog.text


def test_declarative_subscriptions_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "subs.yaml").write_text(
        """
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: widgets}
spec:
  pubsubname: pubsub
  topic: widgets
  routes:
    rules:
    - {match: 'event.data.kind == "a"', path: /widgets/a}
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: gadgets}
spec: {pubsubname: pubsub, topic: gadgets, route: gadgets/in}
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: replaced}
spec: {pubsubname: pubsub, topic: orders, route: /never}
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: elsewhere}
spec: {pubsubname: pubsub, topic: other-app, route: /never}
scopes: [another-app]
"""
    )
    app = FastAPI()
    dapr = Dapr(app, app_id="me", resources_path=tmp_path)
    hits: list[str] = []

    @app.post("/widgets/a")
    async def widget_a(request: Request) -> None:
        hits.append("a")

    @app.post("/gadgets/in")
    async def gadget() -> dict[str, str]:
        hits.append("gadget")
        return {"status": "SUCCESS"}

    @dapr.subscribe("pubsub", "orders")
    async def orders() -> None:
        hits.append("orders")

    with DaprTestClient(app) as client:
        assert client.publish_and_wait("pubsub", "widgets", {"kind": "a"}).outcome == "delivered"
        # A declarative subscription with no matching rule and no default drops (reference 2.2).
        assert client.publish_and_wait("pubsub", "widgets", {"kind": "b"}).outcome == "unmatched"
        assert client.publish_and_wait("pubsub", "gadgets", 1).path == "/gadgets/in"
        # The app's own subscription replaces the declarative one for the same topic.
        assert client.publish_and_wait("pubsub", "orders", 1).path == "/events/pubsub/orders"
        subscriptions = client.get("/v1.0/metadata").json()["subscriptions"]
    assert hits == ["a", "gadget", "orders"]
    assert [(s["topic"], s["type"]) for s in subscriptions] == [
        ("orders", "PROGRAMMATIC"),
        ("widgets", "DECLARATIVE"),
        ("gadgets", "DECLARATIVE"),
    ]


# -- raw payloads -------------------------------------------------------------


def test_raw_payload_subscription_gets_daprds_wrapper() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    bodies: list[dict[str, Any]] = []

    @dapr.subscribe("pubsub", "raw", raw_payload=True)
    async def raw(request: Request) -> None:
        bodies.append(json.loads(await request.body()))

    with DaprTestClient(app) as client:
        client.post(
            "/v1.0/publish/pubsub/raw?metadata.rawPayload=true",
            content=b"\x01\x02",
            headers={"traceparent": "tp"},
        )
        client.wait_for_delivery(topic="raw")
    (body,) = bodies
    assert body["data_base64"] == "AQI="
    assert body["datacontenttype"] == "application/octet-stream"
    assert body["source"] == "Dapr"
    assert body["type"] == "com.dapr.event.sent"
    assert (body["topic"], body["pubsubname"]) == ("raw", "pubsub")
    assert "time" not in body


def test_message_that_is_not_a_cloudevent_is_invalid(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    dapr = Dapr(app)
    calls: list[int] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order() -> None:
        calls.append(1)

    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"), DaprTestClient(app) as client:
        report = client.publish_and_wait("pubsub", "orders", b"raw", metadata={"rawPayload": "true"})
    assert report.outcome == "invalid"
    assert calls == []
    assert "not a JSON CloudEvent" in caplog.text


# -- bulk ---------------------------------------------------------------------


def bulk_app(answer: Any) -> tuple[FastAPI, list[list[str]]]:
    """A bulk handler; `answer(entry ids, call number)` gives its HTTP answer."""
    app = FastAPI()
    dapr = Dapr(app, retry=QUICK)
    posts: list[list[str]] = []

    @dapr.subscribe(
        "pubsub", "orders", bulk=BulkSubscribe(max_await_duration_ms=20), dead_letter_topic="dead"
    )
    async def on_orders(request: Request) -> Response:
        body = json.loads(await request.body())
        ids = [entry["entryId"] for entry in body["entries"]]
        posts.append([entry["event"]["data"]["n"] for entry in body["entries"]])
        status, payload = answer(ids, len(posts))
        return Response(
            payload if isinstance(payload, bytes) else json.dumps(payload),
            status_code=status,
            media_type="application/json",
        )

    @dapr.subscribe("pubsub", "dead")
    async def on_dead() -> None: ...

    return app, posts


async def publish_batch(test: DaprTest, count: int) -> list[Any]:
    for n in range(count):
        await test.dapr.publish("pubsub", "orders", {"n": n})
    return [await test.wait_for_delivery(topic="orders") for _ in range(count)]


async def test_bulk_statuses_per_entry_and_only_failed_entries_are_resent() -> None:
    def answer(ids: list[str], call: int) -> tuple[int, Any]:
        if call == 1:
            # SUCCESS, DROP, RETRY, an unknown status, "" and one entry left out
            statuses = ["SUCCESS", "DROP", "RETRY", "bogus", "", None]
            return 200, {
                "statuses": [
                    {"entryId": i, "status": s} for i, s in zip(ids, statuses, strict=False) if s is not None
                ]
            }
        return 200, {"statuses": [{"entryId": i, "status": "SUCCESS"} for i in ids]}

    app, posts = bulk_app(answer)
    async with DaprTest(app, clock=FakeClock()) as test:
        reports = await publish_batch(test, 6)
    outcomes = sorted(r.outcome for r in reports)
    assert outcomes == ["dead-lettered", "delivered", "delivered", "delivered", "delivered", "delivered"]
    assert len(posts) == 2
    assert posts[0] == [0, 1, 2, 3, 4, 5]
    assert posts[1] == [2, 3, 4, 5]  # only the failed ones


@pytest.mark.parametrize(
    ("status", "payload"),
    [(200, b""), (200, b"not json"), (200, b"{}"), (500, b""), (400, b'{"statuses": []}')],
)
async def test_bulk_answers_that_fail_every_entry(status: int, payload: bytes) -> None:
    app, posts = bulk_app(lambda ids, call: (status, payload))
    async with DaprTest(app, clock=FakeClock()) as test:
        reports = await publish_batch(test, 2)
    assert {r.outcome for r in reports} == {"dead-lettered"}
    assert [len(p) for p in posts] == [2, 2, 2]  # first attempt and two retries


async def test_bulk_404_drops_every_entry_to_the_dead_letter_topic() -> None:
    app, posts = bulk_app(lambda ids, call: (404, b""))
    async with DaprTest(app, clock=FakeClock()) as test:
        reports = await publish_batch(test, 2)
        dead = [await test.wait_for_delivery(topic="dead") for _ in range(2)]
    assert {r.outcome for r in reports} == {"dead-lettered"}
    assert {d.event_id for d in dead} == {r.event_id for r in reports}
    assert len(posts) == 1


async def test_bulk_batches_by_count_and_by_time() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    sizes: list[int] = []

    @dapr.subscribe("pubsub", "orders", bulk=BulkSubscribe(max_messages_count=4, max_await_duration_ms=30))
    async def on_orders(entries: list[BulkEntry[dict[str, int]]]) -> None:
        sizes.append(len(entries))

    async with DaprTest(app) as test:
        for n in range(10):
            await dapr.publish("pubsub", "orders", {"n": n})
        reports = [await test.wait_for_delivery(topic="orders") for _ in range(10)]
    assert {r.outcome for r in reports} == {"delivered"}
    assert sum(sizes) == 10
    assert max(sizes) <= 4
    assert sizes[:2] == [4, 4]  # full batches go at once; the rest after 30 ms


def test_bulk_envelope_as_daprd_posts_it() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    seen: list[tuple[dict[str, Any], dict[str, str]]] = []

    @dapr.subscribe("pubsub", "orders", bulk=BulkSubscribe(max_await_duration_ms=20))
    async def on_orders(request: Request) -> dict[str, Any]:
        body = json.loads(await request.body())
        seen.append((body, dict(request.headers)))
        return {"statuses": [{"entryId": e["entryId"], "status": "SUCCESS"} for e in body["entries"]]}

    with DaprTestClient(app) as client:
        client.post("/v1.0/publish/pubsub/orders?metadata.k=v", json={"n": 1})
        client.wait_for_delivery(topic="orders")
    ((body, headers),) = seen
    assert headers["content-type"] == "application/json"
    assert headers["pubsubname"] == "pubsub"
    assert body["type"] == "com.dapr.event.sent.bulk"
    assert (body["topic"], body["pubsubname"]) == ("orders", "pubsub")
    assert body["metadata"] == {"pubsubName": "pubsub"}
    (entry,) = body["entries"]
    assert entry["contentType"] == "application/cloudevents+json"
    assert entry["metadata"] == {"k": "v", "pubsubName": "pubsub"}
    assert entry["event"]["data"] == {"n": 1}
    assert entry["event"]["source"] == "app"


# -- concurrency and shutdown ---------------------------------------------------


async def test_in_flight_messages_are_bounded() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    running = 0
    peak = 0
    release = asyncio.Event()
    full = asyncio.Event()

    @dapr.subscribe("pubsub", "orders")
    async def on_order() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 64:
            full.set()
        await release.wait()
        running -= 1

    async with DaprTest(app) as test:
        for n in range(100):
            await dapr.publish("pubsub", "orders", n)
        await full.wait()
        assert dapr.backend.running().in_flight() == 64
        release.set()
        reports = [await test.wait_for_delivery(topic="orders") for _ in range(100)]
    assert peak == 64
    assert {r.outcome for r in reports} == {"delivered"}


async def test_stop_waits_for_in_flight_and_returns_waiting_retries() -> None:
    app = FastAPI()
    dapr = Dapr(app, retry=RetryPolicy(policy="constant", duration=3600, max_retries=-1))
    entered = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    @dapr.subscribe("pubsub", "slow")
    async def slow() -> None:
        entered.set()
        await release.wait()
        finished.append("slow")

    @dapr.subscribe("pubsub", "failing")
    async def failing() -> str:
        return "RETRY"

    test = DaprTest(app)
    await test.__aenter__()
    await dapr.publish("pubsub", "failing", 1)
    failing_report = asyncio.ensure_future(test.wait_for_delivery(topic="failing"))
    await dapr.publish("pubsub", "slow", 1)
    await entered.wait()
    runtime = dapr.backend.running()
    stopping = asyncio.ensure_future(test.__aexit__(None, None, None))
    # The stop has begun while the slow handler still runs: it waits for it ...
    await runtime._stopping.wait()
    assert finished == []
    assert not stopping.done()
    release.set()
    await stopping
    assert finished == ["slow"]
    # ... while the message waiting an hour for its retry was handed back at once.
    report = await failing_report
    assert report.outcome == "returned"
    assert len(report.attempts) == 1


async def test_a_bulk_batch_being_gathered_is_returned_at_shutdown() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders", bulk=BulkSubscribe(max_await_duration_ms=60_000))
    async def on_orders(entries: list[BulkEntry[dict[str, int]]]) -> None: ...

    test = DaprTest(app)
    await test.__aenter__()
    await dapr.publish("pubsub", "orders", {"n": 1})
    await asyncio.sleep(0)  # the reader takes it, then waits up to a minute for more
    assert dapr.backend.running().brokers["pubsub"].queued() == 0  # type: ignore[attr-defined]
    await test.__aexit__(None, None, None)
    report = await test.wait_for_delivery(topic="orders", timeout=1)
    assert report.outcome == "returned"


def test_sync_handlers_do_not_block_the_engine() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    barrier = threading.Barrier(2, timeout=5)

    @dapr.subscribe("pubsub", "orders")
    def on_order() -> None:
        barrier.wait()  # two deliveries must run at the same time to pass

    with DaprTestClient(app) as client:
        client.post("/v1.0/publish/pubsub/orders", json=1)
        client.post("/v1.0/publish/pubsub/orders", json=2)
        assert client.wait_for_delivery().outcome == "delivered"
        assert client.wait_for_delivery().outcome == "delivered"
