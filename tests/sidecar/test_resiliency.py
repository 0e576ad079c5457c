"""Resiliency resources (reference 8): retries, timeouts and circuit breakers on deliveries
(inbound), on publishing (outbound) and on invocations, checked on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from fastapi_dapr import (
    RETRY,
    SUCCESS,
    BulkEntry,
    BulkSubscribe,
    CloudEvent,
    Dapr,
    DaprAPIError,
    InvocationSettings,
    ResourceError,
)
from fastapi_dapr.brokers import BROKER_TYPES, BrokerError
from fastapi_dapr.brokers.memory import MemoryBroker
from fastapi_dapr.sidecar.breaker import CircuitBreaker, compile_trip
from fastapi_dapr.sidecar.policy_errors import CircuitBusy, CircuitOpen
from fastapi_dapr.sidecar.resources import load_resources
from fastapi_dapr.testing import DaprTest, FakeClock

from ..servers import serve


def resiliency(spec: str, name: str = "policies", scopes: str = "") -> str:
    head = f"apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: {name}\n{scopes}"
    return f"{head}spec:\n{spec}"


def folder_with(tmp_path: Path, *documents: str) -> Path:
    folder = tmp_path / "resources"
    folder.mkdir(exist_ok=True)
    for index, text in enumerate(documents):
        (folder / f"{index:02}.yaml").write_text(text)
    return folder


INBOUND = """  policies:
    retries:
      fixed: {{policy: constant, duration: 2s, maxRetries: {retries}}}
  targets:
    components:
      pubsub:
        inbound: {{retry: fixed}}
"""


def failing_app(folder: Path, answers: list[Any], dead_letter: bool = True) -> tuple[FastAPI, list[int]]:
    """An app whose handler gives `answers` one by one (the last one again and again)."""
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", resources_path=folder)
    calls: list[int] = []

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead" if dead_letter else None)
    async def on_order(event: CloudEvent[dict[str, int]]) -> Any:
        calls.append(event.data["n"])
        return answers[min(len(calls) - 1, len(answers) - 1)]

    @dapr.subscribe("pubsub", "dead")
    async def on_dead(event: CloudEvent[dict[str, int]]) -> None:
        return None

    return app, calls


# -- the state machine of a circuit breaker ----------------------------------------


def test_breaker_opens_when_trip_is_true_and_half_opens_after_its_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("cb", timeout=30.0, trip=compile_trip("consecutiveFailures >= 2"), clock=clock)
    for _ in range(2):
        breaker.after(breaker.before(), success=False)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        breaker.before()
    clock.advance(30.0)
    assert breaker.state == "open"  # gobreaker: only once the timeout is strictly over
    clock.advance(0.001)
    assert breaker.state == "half-open"
    trial = breaker.before()
    with pytest.raises(CircuitBusy):  # maxRequests 1: one trial at a time
        breaker.before()
    breaker.after(trial, success=True)
    assert breaker.state == "closed"


def test_half_open_failure_opens_again_and_successes_close_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("cb", max_requests=2, timeout=10.0, clock=clock)
    for _ in range(6):  # the default trip: consecutiveFailures > 5
        assert breaker.state == "closed"
        breaker.after(breaker.before(), success=False)
    assert breaker.state == "open"
    clock.advance(11)
    breaker.after(breaker.before(), success=False)
    assert breaker.state == "open"  # one failure while half-open
    clock.advance(11)
    first, second = breaker.before(), breaker.before()
    breaker.after(first, success=True)
    assert breaker.state == "half-open"  # maxRequests successes in a row are needed
    breaker.after(second, success=True)
    assert breaker.state == "closed"


def test_interval_clears_the_counts_of_a_closed_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("cb", interval=10.0, trip=compile_trip("totalFailures >= 3"), clock=clock)
    for _ in range(2):
        breaker.after(breaker.before(), success=False)
    clock.advance(10.5)
    breaker.after(breaker.before(), success=False)
    assert breaker.state == "closed"  # two of the three failures were in the last interval
    assert breaker.counts.total_failures == 1


def test_a_result_from_an_earlier_generation_is_not_counted() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("cb", timeout=5.0, trip=compile_trip("consecutiveFailures >= 1"), clock=clock)
    slow = breaker.before()
    breaker.after(breaker.before(), success=False)
    assert breaker.state == "open"
    breaker.after(slow, success=True)  # it started before the circuit opened
    assert breaker.state == "open"


@pytest.mark.parametrize(
    ("trip", "counts", "trips"),
    [
        ("requests > 3 && totalFailures * 2 > requests", (4, 1, 3), True),
        ("requests > 3 && totalFailures * 2 > requests", (4, 2, 2), False),
        ("consecutiveSuccesses == 0 && totalSuccesses < 1", (1, 0, 1), True),
        ("noSuchCount > 1", (9, 0, 9), False),  # an evaluation error does not trip
        ("requests", (9, 0, 9), False),  # not a boolean: does not trip
    ],
)
def test_trip_expressions_see_every_count(trip: str, counts: tuple[int, int, int], trips: bool) -> None:
    from fastapi_dapr.sidecar.breaker import Counts

    requests, successes, failures = counts
    value = Counts(requests, successes, failures, 0 if failures else successes, failures)
    assert compile_trip(trip)(value) is trips


# -- reading the resource ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "problem"),
    [
        ("  policies:\n    timeouts: {t: soon}\n", "spec.policies.timeouts.t", "'soon' is not a duration"),
        (
            "  policies:\n    retries: {r: {policy: linear}}\n",
            "spec.policies.retries.r.policy",
            "must be constant or exponential",
        ),
        (
            "  policies:\n    retries: {r: {maxRetries: -2}}\n",
            "spec.policies.retries.r.maxRetries",
            "must be -1",
        ),
        (
            "  policies:\n    retries: {r: {initialInterval: 1s}}\n",
            "spec.policies.retries.r.initialInterval",
            "is not a field of a retry policy",
        ),
        (
            "  policies:\n    retries: {r: {matching: {httpStatusCodes: '500-'}}}\n",
            "spec.policies.retries.r.matching.httpStatusCodes",
            "'500-' is not a code or a range",
        ),
        (
            "  policies:\n    retries: {r: {matching: {httpStatusCodes: '99'}}}\n",
            "spec.policies.retries.r.matching.httpStatusCodes",
            "codes go from 100 to 599",
        ),
        (
            "  policies:\n    retries: {r: {matching: {gRPCStatusCodes: '5-3'}}}\n",
            "spec.policies.retries.r.matching.gRPCStatusCodes",
            "the range ends before it starts",
        ),
        (
            "  policies:\n    circuitBreakers: {cb: {trip: 'consecutiveFailures >'}}\n",
            "spec.policies.circuitBreakers.cb.trip",
            "does not compile",
        ),
        (
            "  targets:\n    components: {pubsub: {inbound: {retry: missing}}}\n",
            "spec.targets.components.pubsub",
            "retry 'missing' is not a policy of any Resiliency resource",
        ),
        (
            "  targets:\n    apps: {orders: {circuitBreaker: cb}}\n",
            "spec.targets.apps.orders",
            "circuitBreaker 'cb' is not a policy",
        ),
    ],
)
def test_a_broken_resiliency_stops_the_start(tmp_path: Path, spec: str, field: str, problem: str) -> None:
    folder = folder_with(tmp_path, resiliency(spec))
    app = FastAPI()
    Dapr(app, app_id="orders", resources_path=folder)

    async def start() -> None:
        async with DaprTest(app):
            pass

    with pytest.raises(ResourceError) as caught:
        asyncio.run(start())
    message = str(caught.value)
    assert "Resiliency 'policies'" in message
    assert field in message
    assert problem in message


def test_resources_are_merged_later_names_overwriting_and_scopes_applying(tmp_path: Path) -> None:
    first = resiliency("  policies:\n    timeouts: {general: 5s, other: 1000}\n", name="a")
    second = resiliency("  policies:\n    timeouts: {general: 2m}\n", name="b")
    elsewhere = resiliency(
        "  policies:\n    timeouts: {general: 1h}\n", name="c", scopes="scopes: [payments]\n"
    )
    loaded = load_resources([folder_with(tmp_path, first, second, elsewhere)], app_id="orders")
    from fastapi_dapr.sidecar.resiliency import Resiliency

    merged = Resiliency(loaded.resiliencies)
    assert merged.names == ["a", "b"]  # c is scoped to another app
    assert merged.timeouts == {"general": 120.0, "other": 1.0}  # an integer is milliseconds


def test_every_document_of_a_file_is_read(tmp_path: Path) -> None:
    # daprd reads only the first document of a Resiliency file (reference 7.3).
    both = resiliency("  policies:\n    timeouts: {a: 1s}\n", name="one") + "\n---\n"
    both += resiliency("  policies:\n    timeouts: {b: 2s}\n", name="two")
    loaded = load_resources([folder_with(tmp_path, both)], app_id="orders")
    assert [r.name for r in loaded.resiliencies] == ["one", "two"]


# -- inbound: deliveries ------------------------------------------------------------


async def test_constant_retries_wait_their_duration_then_dead_letter(tmp_path: Path) -> None:
    app, calls = failing_app(folder_with(tmp_path, resiliency(INBOUND.format(retries=3))), [RETRY])
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert report.outcome == "dead-lettered"
    assert len(report.attempts) == 4  # maxRetries 3: four attempts
    assert clock.sleeps == [2.0, 2.0, 2.0]
    assert calls == [1, 1, 1, 1]


async def test_max_retries_minus_one_retries_until_it_succeeds(tmp_path: Path) -> None:
    spec = INBOUND.replace("duration: 2s, maxRetries: {retries}", "maxRetries: -1").format()
    app, calls = failing_app(folder_with(tmp_path, resiliency(spec)), [RETRY] * 25 + [SUCCESS])
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert report.outcome == "delivered"
    assert len(calls) == 26
    assert clock.sleeps == [5.0] * 25  # constant's default duration, no limit


async def test_max_retries_zero_makes_one_attempt(tmp_path: Path) -> None:
    app, calls = failing_app(folder_with(tmp_path, resiliency(INBOUND.format(retries=0))), [RETRY])
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert report.outcome == "dead-lettered"
    assert calls == [1]
    assert clock.sleeps == []


async def test_exponential_backoff_grows_by_half_up_to_max_interval(tmp_path: Path) -> None:
    spec = """  policies:
    retries:
      growing: {policy: Exponential, maxInterval: 1s, maxRetries: 6, duration: 30s}
  targets:
    components:
      pubsub: {inbound: {retry: growing}}
"""
    app, _ = failing_app(folder_with(tmp_path, resiliency(spec)), [RETRY])
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert len(report.attempts) == 7
    # 0.5 s, then x1.5, capped at maxInterval; each randomised by +/- 50 %; `duration` ignored.
    for wait, interval in zip(clock.sleeps, [0.5, 0.75, 1.0, 1.0, 1.0, 1.0], strict=True):
        assert interval * 0.5 <= wait <= interval * 1.5


@pytest.mark.parametrize(
    ("answer", "attempts"),
    [
        (Response(status_code=503), 3),
        (Response(status_code=429), 3),
        (Response(status_code=500), 1),  # not in the list: not retried
        (RETRY, 3),  # a RETRY answer has no status: always retried
    ],
)
async def test_matching_http_status_codes(tmp_path: Path, answer: Any, attempts: int) -> None:
    spec = """  policies:
    retries:
      some: {policy: constant, duration: 1s, maxRetries: 2, matching: {httpStatusCodes: "429, 502-504"}}
  targets:
    components:
      pubsub: {inbound: {retry: some}}
"""
    app, calls = failing_app(folder_with(tmp_path, resiliency(spec)), [answer])
    async with DaprTest(app, clock=FakeClock()) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert len(calls) == attempts
    assert report.outcome == "dead-lettered"


@pytest.mark.parametrize(
    ("defaults", "attempts"),
    [
        ({"DefaultRetryPolicy": 1}, 2),
        ({"DefaultRetryPolicy": 1, "DefaultComponentRetryPolicy": 2}, 3),
        ({"DefaultComponentRetryPolicy": 2, "DefaultComponentInboundRetryPolicy": 3}, 4),
        ({"DefaultComponentInboundRetryPolicy": 3, "DefaultPubsubComponentInboundRetryPolicy": 4}, 5),
        ({"DefaultRetryPolicy": 1, "DefaultComponentOutboundRetryPolicy": 4}, 2),  # not for deliveries
    ],
)
async def test_default_policies_most_specific_first(
    tmp_path: Path, defaults: Mapping[str, int], attempts: int
) -> None:
    retries = "".join(
        f"      {name}: {{policy: constant, duration: 1s, maxRetries: {count}}}\n"
        for name, count in defaults.items()
    )
    spec = f"  policies:\n    retries:\n{retries}"
    app, calls = failing_app(folder_with(tmp_path, resiliency(spec)), [RETRY])
    async with DaprTest(app, clock=FakeClock()) as test:
        await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert len(calls) == attempts


async def test_a_targeted_component_without_retry_is_not_retried(tmp_path: Path) -> None:
    # As daprd: the component's own entry wins, defaults and fastapi-dapr's default retry included.
    spec = """  policies:
    timeouts: {general: 5s}
    retries:
      DefaultRetryPolicy: {policy: constant, maxRetries: 5}
  targets:
    components:
      pubsub: {inbound: {timeout: general}}
"""
    app, calls = failing_app(folder_with(tmp_path, resiliency(spec)), [RETRY])
    async with DaprTest(app, clock=FakeClock()) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert calls == [1]
    assert report.outcome == "dead-lettered"


TIMEOUT = """  policies:
    timeouts: {quick: 5s}
    retries:
      once: {policy: constant, duration: 1s, maxRetries: 1}
  targets:
    components:
      pubsub: {inbound: {timeout: quick, retry: once}}
"""


@pytest.mark.parametrize("takes_request", [False, True], ids=["direct", "http"])
async def test_a_timeout_cancels_a_slow_handler_and_the_retry_delivers(
    tmp_path: Path, takes_request: bool
) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", resources_path=folder_with(tmp_path, resiliency(TIMEOUT)))
    started = asyncio.Event()
    seen: list[str] = []

    async def handle() -> None:
        if not seen:
            seen.append("started")
            started.set()
            try:
                await asyncio.Event().wait()  # never answers
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
        seen.append("answered")

    if takes_request:

        @dapr.subscribe("pubsub", "orders")
        async def on_order_http(event: CloudEvent[dict[str, int]], request: Request) -> None:
            await handle()

    else:

        @dapr.subscribe("pubsub", "orders")
        async def on_order(event: CloudEvent[dict[str, int]]) -> None:
            await handle()

    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        waiting = asyncio.create_task(test.publish_and_wait("pubsub", "orders", {"n": 1}))
        await started.wait()
        clock.advance(4.9)
        await asyncio.sleep(0)  # let a wrongly early cancellation show
        assert seen == ["started"]
        clock.advance(0.2)
        report = await waiting
    assert seen == ["started", "cancelled", "answered"]
    assert report.outcome == "delivered"
    assert "context deadline exceeded" in report.attempts[0].detail
    assert clock.sleeps == [1.0]


async def test_a_circuit_breaker_fails_deliveries_fast_then_closes(tmp_path: Path) -> None:
    spec = """  policies:
    retries:
      never: {policy: constant, maxRetries: 0}
    circuitBreakers:
      cb: {maxRequests: 1, timeout: 30s, trip: consecutiveFailures >= 2}
  targets:
    components:
      pubsub: {inbound: {retry: never, circuitBreaker: cb}}
"""
    answers: list[Any] = [RETRY, RETRY, SUCCESS]
    # One breaker per component (as daprd): no dead-letter topic, whose deliveries would count.
    app, calls = failing_app(folder_with(tmp_path, resiliency(spec)), answers, dead_letter=False)
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        for n in (1, 2):
            failed = await test.publish_and_wait("pubsub", "orders", {"n": n})
            assert failed.outcome == "failed"
        fast = await test.publish_and_wait("pubsub", "orders", {"n": 3})
        assert calls == [1, 2]  # the open circuit did not call the app
        assert fast.outcome == "failed"
        assert "circuit breaker is open" in fast.attempts[0].detail
        assert len(fast.attempts) == 1
        clock.advance(30.5)  # open -> half-open: one trial message
        trial = await test.publish_and_wait("pubsub", "orders", {"n": 4})
        assert trial.outcome == "delivered"
        after = await test.publish_and_wait("pubsub", "orders", {"n": 5})
        assert after.outcome == "delivered"  # closed again
    assert calls == [1, 2, 4, 5]


async def test_bulk_deliveries_follow_the_inbound_policy(tmp_path: Path) -> None:
    app = FastAPI()
    dapr = Dapr(
        app, app_id="orders", resources_path=folder_with(tmp_path, resiliency(INBOUND.format(retries=2)))
    )
    posts: list[int] = []

    @dapr.subscribe("pubsub", "orders", bulk=BulkSubscribe(max_messages_count=1, max_await_duration_ms=10))
    async def on_orders(entries: list[BulkEntry[dict[str, int]]]) -> dict[str, Any]:
        posts.append(len(entries))
        return {"statuses": [{"entryId": e.entry_id, "status": "RETRY"} for e in entries]}

    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert report.outcome == "failed"
    assert posts == [1, 1, 1]
    assert clock.sleeps == [2.0, 2.0]


# -- outbound: publishing -----------------------------------------------------------


class FlakyBroker(MemoryBroker):
    """The in-memory broker, whose publishes to a topic fail (or hang) a given number of times."""

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str) -> None:
        super().__init__(
            name, {k: v for k, v in metadata.items() if k not in ("failures", "hang")}, app_id=app_id
        )
        self.failures = int(metadata.get("failures", "0"))
        self.hang = metadata.get("hang") == "true"
        self.failing_topic = metadata.get("failingTopic", "")
        self.calls = 0
        self.entered = asyncio.Event()

    async def publish(
        self,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        *,
        decoded: Mapping[str, Any] | None = None,
    ) -> str:
        if topic != self.failing_topic:
            return await super().publish(topic, data, metadata, decoded=decoded)
        self.calls += 1
        self.entered.set()
        if self.hang and self.calls == 1:
            await asyncio.Event().wait()
        if self.calls <= self.failures:
            raise BrokerError(f"broker down (call {self.calls})")
        return await super().publish(topic, data, metadata, decoded=decoded)


def flaky_component(failures: int, topic: str = "orders", hang: bool = False) -> str:
    return (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
        "spec:\n  type: pubsub.flaky\n  version: v1\n  metadata:\n"
        f"  - {{name: failures, value: '{failures}'}}\n  - {{name: failingTopic, value: {topic}}}\n"
        f"  - {{name: hang, value: '{'true' if hang else 'false'}'}}\n"
    )


OUTBOUND = """  policies:
    timeouts: {{short: 3s}}
    retries:
      publish: {{policy: constant, duration: 1s, maxRetries: {retries}}}
    circuitBreakers:
      cb: {{timeout: 20s, trip: consecutiveFailures >= 3}}
  targets:
    components:
      pubsub: {{outbound: {{retry: publish{extra}}}}}
"""


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BROKER_TYPES, "pubsub.flaky", (f"{__name__}:FlakyBroker", None))


def publishing_app(folder: Path) -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", resources_path=folder)
    got: list[int] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> None:
        got.append(event.data["n"])

    return app, got


def broker_of(app: FastAPI) -> FlakyBroker:
    broker = app.state.fastapi_dapr.backend.running().brokers["pubsub"]
    assert isinstance(broker, FlakyBroker)
    return broker


@pytest.mark.usefixtures("flaky")
async def test_publishing_is_retried_by_the_outbound_policy(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, flaky_component(2), resiliency(OUTBOUND.format(retries=3, extra="")))
    app, got = publishing_app(folder)
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        response = await test.client.post("/v1.0/publish/pubsub/orders", json={"n": 1})
        assert response.status_code == 204
        await test.wait_for_delivery(topic="orders")
        assert broker_of(app).calls == 3
    assert got == [1]
    assert clock.sleeps == [1.0, 1.0]


@pytest.mark.usefixtures("flaky")
async def test_publishing_fails_with_daprds_error_once_retries_are_spent(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, flaky_component(9), resiliency(OUTBOUND.format(retries=1, extra="")))
    app, got = publishing_app(folder)
    async with DaprTest(app, clock=FakeClock()) as test:
        response = await test.client.post("/v1.0/publish/pubsub/orders", json={"n": 1})
        assert broker_of(app).calls == 2
    assert response.status_code == 500
    body = response.json()
    assert body["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert body["message"] == "error when publishing to topic orders in pubsub pubsub: broker down (call 2)"
    assert got == []


@pytest.mark.usefixtures("flaky")
async def test_an_open_outbound_circuit_fails_publishes_without_the_broker(tmp_path: Path) -> None:
    spec = OUTBOUND.format(retries=0, extra=", circuitBreaker: cb")
    app, got = publishing_app(folder_with(tmp_path, flaky_component(3), resiliency(spec)))
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        for _ in range(3):
            failed = await test.client.post("/v1.0/publish/pubsub/orders", json={"n": 0})
            assert failed.status_code == 500
        fast = await test.client.post("/v1.0/publish/pubsub/orders", json={"n": 1})
        assert broker_of(app).calls == 3
        assert fast.status_code == 500
        assert fast.json()["message"].endswith(": circuit breaker is open")
        clock.advance(21)
        response = await test.client.post("/v1.0/publish/pubsub/orders", json={"n": 2})
        assert response.status_code == 204
        await test.wait_for_delivery(topic="orders")
    assert got == [2]


@pytest.mark.usefixtures("flaky")
async def test_an_outbound_timeout_cancels_a_hanging_publish(tmp_path: Path) -> None:
    spec = OUTBOUND.format(retries=1, extra=", timeout: short")
    app, got = publishing_app(folder_with(tmp_path, flaky_component(0, hang=True), resiliency(spec)))
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        posting = asyncio.create_task(test.client.post("/v1.0/publish/pubsub/orders", json={"n": 1}))
        await broker_of(app).entered.wait()
        clock.advance(3.5)
        response = await posting
        assert response.status_code == 204  # the second attempt
        await test.wait_for_delivery(topic="orders")
    assert got == [1]
    assert clock.sleeps == [1.0]


@pytest.mark.usefixtures("flaky")
async def test_dead_letters_are_published_under_the_outbound_policy(tmp_path: Path) -> None:
    folder = folder_with(
        tmp_path, flaky_component(1, topic="dead"), resiliency(OUTBOUND.format(retries=2, extra=""))
    )
    app, _ = failing_app(folder, [Response(status_code=404)])  # DROP: to the dead letters
    async with DaprTest(app, clock=FakeClock()) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
        dead = await test.wait_for_delivery(topic="dead")
        assert broker_of(app).calls == 2
    assert report.outcome == "dead-lettered"
    assert dead.outcome == "delivered"


# -- invocations ----------------------------------------------------------------------


class Upstream:
    """A real HTTP server whose answers are planned: `plan` statuses first, then 200."""

    def __init__(self) -> None:
        self.app = FastAPI()
        self.seen: list[tuple[str, bytes]] = []
        self.plan: list[int] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

        @self.app.api_route("/items/{rest:path}", methods=["GET", "POST"])
        async def items(request: Request, rest: str) -> Response:
            self.seen.append((request.method, await request.body()))
            status = self.plan.pop(0) if self.plan else 200
            attempt = str(len(self.seen))
            return JSONResponse(
                {"attempt": len(self.seen)}, status_code=status, headers={"x-attempt": attempt}
            )

        @self.app.get("/slow")
        async def slow() -> dict[str, str]:
            self.entered.set()
            await self.release.wait()
            return {"late": "yes"}


def endpoint_doc(url: str) -> str:
    return (
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: upstream}\n"
        f"spec:\n  version: v1alpha1\n  baseUrl: {url}\n"
    )


APP_POLICY = """  policies:
    timeouts: {{short: 2s}}
    retries:
      calls: {{policy: constant, duration: 1s, maxRetries: {retries}{matching}}}
    circuitBreakers:
      cb: {{timeout: 10s, trip: consecutiveFailures >= 2}}
  targets:
    apps:
      {target}: {{retry: calls{extra}}}
"""


def app_policy(retries: int = 3, matching: str = "", extra: str = "", target: str = "upstream") -> str:
    return resiliency(APP_POLICY.format(retries=retries, matching=matching, extra=extra, target=target))


def invoking_app(folder: Path, **settings: Any) -> tuple[FastAPI, Dapr]:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", resources_path=folder, invocation=InvocationSettings(**settings))
    return app, dapr


async def test_an_invocation_is_retried_with_its_body_sent_again(tmp_path: Path) -> None:
    upstream = Upstream()
    upstream.plan[:] = [503, 500]
    async with serve(upstream.app) as url:
        app, _ = invoking_app(folder_with(tmp_path, endpoint_doc(url), app_policy()))
        clock = FakeClock()
        async with DaprTest(app, clock=clock) as test:
            response = await test.client.post("/v1.0/invoke/upstream/method/items/a", content=b"hello")
    assert response.status_code == 200
    assert response.json() == {"attempt": 3}
    assert upstream.seen == [("POST", b"hello")] * 3
    assert clock.sleeps == [1.0, 1.0]


async def test_once_retries_are_spent_the_caller_gets_the_last_answer(tmp_path: Path) -> None:
    upstream = Upstream()
    upstream.plan[:] = [503] * 10
    async with serve(upstream.app) as url:
        app, _ = invoking_app(folder_with(tmp_path, endpoint_doc(url), app_policy(retries=2)))
        async with DaprTest(app, clock=FakeClock()) as test:
            response = await test.client.get("/v1.0/invoke/upstream/method/items/a")
    assert response.status_code == 503
    assert response.json() == {"attempt": 3}
    assert response.headers["x-attempt"] == "3"
    assert len(upstream.seen) == 3


async def test_an_answer_outside_matching_is_not_retried(tmp_path: Path) -> None:
    upstream = Upstream()
    upstream.plan[:] = [500]
    policy = app_policy(matching=', matching: {httpStatusCodes: "502-504"}')
    async with serve(upstream.app) as url:
        app, _ = invoking_app(folder_with(tmp_path, endpoint_doc(url), policy))
        async with DaprTest(app, clock=FakeClock()) as test:
            response = await test.client.get("/v1.0/invoke/upstream/method/items/a")
    assert response.status_code == 500
    assert response.json() == {"attempt": 1}
    assert len(upstream.seen) == 1


async def test_a_streamed_request_is_sent_once(tmp_path: Path) -> None:
    upstream = Upstream()
    upstream.plan[:] = [503]

    async def chunks() -> Any:
        yield b"part one, "
        yield b"part two"

    async with serve(upstream.app) as url:
        app, _ = invoking_app(folder_with(tmp_path, endpoint_doc(url), app_policy()))
        async with DaprTest(app, clock=FakeClock()) as test:
            response = await test.client.post("/v1.0/invoke/upstream/method/items/a", content=chunks())
    assert response.status_code == 503  # a body that was streamed can't be sent again
    assert upstream.seen == [("POST", b"part one, part two")]


async def test_an_open_circuit_answers_at_once_then_half_opens(tmp_path: Path) -> None:
    upstream = Upstream()
    upstream.plan[:] = [500, 500]
    async with serve(upstream.app) as url:
        policy = app_policy(retries=0, extra=", circuitBreaker: cb")
        app, _ = invoking_app(folder_with(tmp_path, endpoint_doc(url), policy))
        clock = FakeClock()
        async with DaprTest(app, clock=clock) as test:
            for _ in range(2):
                failed = await test.client.get("/v1.0/invoke/upstream/method/items/a")
                assert failed.status_code == 500
            fast = await test.client.get("/v1.0/invoke/upstream/method/items/a")
            assert len(upstream.seen) == 2
            assert fast.status_code == 500
            assert fast.json() == {
                "errorCode": "ERR_DIRECT_INVOKE",
                "message": "failed to invoke, id: upstream, err: circuit breaker is open",
            }
            clock.advance(10.5)
            again = await test.client.get("/v1.0/invoke/upstream/method/items/a")
    assert again.status_code == 200
    assert len(upstream.seen) == 3


async def test_an_invocation_timeout_cancels_the_call(tmp_path: Path) -> None:
    upstream = Upstream()
    async with serve(upstream.app) as url:
        policy = app_policy(retries=0, extra=", timeout: short")
        app, _ = invoking_app(folder_with(tmp_path, endpoint_doc(url), policy))
        clock = FakeClock()
        try:
            async with DaprTest(app, clock=clock) as test:
                calling = asyncio.create_task(test.client.get("/v1.0/invoke/upstream/method/slow"))
                await upstream.entered.wait()
                clock.advance(2.5)
                response = await asyncio.wait_for(calling, 10)  # a failure, not a hang, if not cut
        finally:
            upstream.release.set()
    assert response.status_code == 500
    assert response.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "context deadline exceeded" in response.json()["message"]


async def test_dapr_invoke_in_code_follows_the_same_policy(tmp_path: Path) -> None:
    upstream = Upstream()
    upstream.plan[:] = [502]
    async with serve(upstream.app) as url:
        app, dapr = invoking_app(folder_with(tmp_path, endpoint_doc(url), app_policy()))
        clock = FakeClock()
        async with DaprTest(app, clock=clock):
            response = await dapr.invoke("upstream", "items/b", http_method="POST", content=b"again")
    assert response.status_code == 200
    assert upstream.seen == [("POST", b"again")] * 2
    assert clock.sleeps == [1.0]


async def test_invoking_this_app_follows_its_app_policy(tmp_path: Path) -> None:
    app, dapr = invoking_app(folder_with(tmp_path, app_policy(target="orders")))
    calls: list[bytes] = []

    @app.post("/flaky")
    async def flaky(request: Request) -> Response:
        calls.append(await request.body())
        return Response(status_code=503 if len(calls) < 3 else 200, content=b"done")

    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        response = await test.client.post("/v1.0/invoke/orders/method/flaky", content=b"payload")
        assert response.status_code == 200
        assert response.content == b"done"
        in_code = await dapr.invoke("orders", "flaky", http_method="POST", content=b"payload")
    assert in_code.status_code == 200
    assert calls == [b"payload"] * 4
    assert clock.sleeps == [1.0, 1.0]


def closed_port() -> int:
    """A loopback port nothing listens on (just released by the system)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_another_app_that_cannot_be_reached_gets_daprds_built_in_retries(tmp_path: Path) -> None:
    app, dapr = invoking_app(tmp_path, apps={"payments": f"http://127.0.0.1:{closed_port()}"})
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        response = await test.client.get("/v1.0/invoke/payments/method/pay")
        assert clock.sleeps == [1.0, 1.0, 1.0]  # three retries, a second apart
        with pytest.raises(DaprAPIError) as caught:
            await dapr.invoke("payments", "pay")
    assert response.status_code == 500
    assert response.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "could not connect" in response.json()["message"]
    assert caught.value.status_code == 500
    assert clock.sleeps == [1.0] * 6


async def test_a_policy_for_the_app_replaces_the_built_in_retries(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, app_policy(retries=1, target="payments"))
    app, _ = invoking_app(folder, apps={"payments": f"http://127.0.0.1:{closed_port()}"})
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        response = await test.client.get("/v1.0/invoke/payments/method/pay")
    assert response.status_code == 500
    assert clock.sleeps == [1.0]


# -- regressions of the review ---------------------------------------------------------


async def test_a_cancelled_trial_counts_as_a_failure_and_does_not_hold_the_circuit() -> None:
    from fastapi_dapr.sidecar.policy import Policy

    clock = FakeClock()
    breaker = CircuitBreaker("cb", timeout=10.0, trip=compile_trip("consecutiveFailures >= 1"), clock=clock)
    breaker.after(breaker.before(), success=False)
    clock.advance(11)
    assert breaker.state == "half-open"
    trial = asyncio.create_task(Policy("p", breaker=breaker).attempt(asyncio.Event().wait, clock))
    await asyncio.sleep(0)  # the trial is admitted and waits
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert breaker.state == "open"  # counted as a failed trial, not left holding the only place
    clock.advance(11)
    breaker.after(breaker.before(), success=True)
    assert breaker.state == "closed"


async def test_a_caller_cancelled_with_the_deadline_is_cancelled_not_timed_out() -> None:
    from fastapi_dapr.sidecar.policy import Abandoned, with_timeout

    clock = FakeClock()
    call = asyncio.create_task(with_timeout(asyncio.Event().wait, 5.0, clock, Abandoned()))
    await asyncio.sleep(0)
    clock.advance(5.0)  # the deadline and the cancellation in the same turn
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_the_deadline_answers_even_when_the_operation_ignores_its_cancellation() -> None:
    from fastapi_dapr.sidecar.policy import Abandoned, with_timeout
    from fastapi_dapr.sidecar.policy_errors import AttemptTimeout

    clock = FakeClock()
    release = asyncio.Event()
    finished: list[str] = []

    async def stubborn() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # goes on after being cancelled
        finished.append("late")
        return "late answer"

    call = asyncio.create_task(with_timeout(stubborn, 1.0, clock, Abandoned()))
    await asyncio.sleep(0)
    clock.advance(1.0)
    with pytest.raises(AttemptTimeout, match=r"^context deadline exceeded$"):
        await asyncio.wait_for(call, 10)
    assert finished == []  # answered at the deadline, not when the operation ended
    release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert finished == ["late"]


def test_a_timeout_of_zero_is_no_timeout(tmp_path: Path) -> None:
    from fastapi_dapr.sidecar.resiliency import Resiliency

    spec = (
        "  policies:\n    timeouts: {none: 0s}\n"
        "  targets:\n    components: {pubsub: {inbound: {timeout: none}}}\n"
    )
    loaded = load_resources([folder_with(tmp_path, resiliency(spec))], app_id="orders")
    assert Resiliency(loaded.resiliencies).component_policy("pubsub", "Inbound").timeout is None


@pytest.mark.parametrize("max_retries", [-1, 0, 2])
def test_the_built_in_service_retries_keep_at_least_three(tmp_path: Path, max_retries: int) -> None:
    from fastapi_dapr.sidecar.resiliency import Resiliency

    retry = f"{{policy: constant, maxRetries: {max_retries}}}"
    spec = f"  policies:\n    retries:\n      DaprBuiltInServiceRetries: {retry}\n"
    loaded = load_resources([folder_with(tmp_path, resiliency(spec))], app_id="orders")
    assert Resiliency(loaded.resiliencies).built_in_service_retries.max_retries == 3


def test_exponential_retries_stop_when_the_next_would_start_past_fifteen_minutes() -> None:
    from fastapi_dapr import RetryPolicy

    policy = RetryPolicy(policy="exponential", randomization_factor=0.0, max_retries=-1)
    assert policy.delay(1, elapsed=899.4) == 0.5
    assert policy.delay(1, elapsed=899.6) is None  # 899.6 + 0.5 > 900


async def test_a_default_policy_keeps_the_built_in_retries_of_another_app(tmp_path: Path) -> None:
    spec = "  policies:\n    timeouts:\n      DefaultTimeoutPolicy: 5s\n"
    folder = folder_with(tmp_path, resiliency(spec))
    app, _ = invoking_app(folder, apps={"payments": f"http://127.0.0.1:{closed_port()}"})
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        response = await test.client.get("/v1.0/invoke/payments/method/pay")
    assert response.status_code == 500
    assert clock.sleeps == [1.0, 1.0, 1.0]  # as daprd, which nests the two


async def test_a_refusal_made_here_does_not_count_against_the_circuit(tmp_path: Path) -> None:
    spec = """  policies:
    circuitBreakers:
      DefaultCircuitBreakerPolicy: {timeout: 30s, trip: consecutiveFailures >= 1}
"""
    app, _ = invoking_app(folder_with(tmp_path, resiliency(spec)))
    async with DaprTest(app, clock=FakeClock()) as test:
        target = "/v1.0/invoke/http%3A%2F%2Fapi.example.com/method/x"
        answers = [await test.client.get(target) for _ in range(3)]
    # The URL rules refuse it (no allowed_urls) every time; the circuit never opens.
    assert [a.status_code for a in answers] == [403, 403, 403]
    assert all("circuit breaker" not in a.json()["message"] for a in answers)


@pytest.mark.usefixtures("flaky")
async def test_a_dead_letter_publish_is_given_up_after_thirty_seconds(tmp_path: Path) -> None:
    spec = OUTBOUND.replace("maxRetries: {retries}", "maxRetries: -1").format(extra="")
    folder = folder_with(tmp_path, flaky_component(10**6, topic="dead"), resiliency(spec))
    app, _ = failing_app(folder, [Response(status_code=404)])
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1})
    assert report.outcome == "failed"  # not dead-lettered, and settled, not left hanging
    assert "dead-letter publish to dead failed" in report.reason
    assert 29 <= len(clock.sleeps) <= 31  # one-second retries for daprd's 30 s


def test_advancing_the_clock_from_a_synchronous_test(tmp_path: Path) -> None:
    import threading

    from fastapi_dapr.testing import DaprTestClient

    app = FastAPI()
    dapr = Dapr(app, app_id="orders", resources_path=folder_with(tmp_path, resiliency(TIMEOUT)))
    started = threading.Event()
    calls: list[int] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> None:
        calls.append(1)
        if len(calls) == 1:
            started.set()
            await asyncio.Event().wait()

    clock = FakeClock()
    with DaprTestClient(app, clock=clock) as client:
        client.post("/v1.0/publish/pubsub/orders", json={"n": 1})
        assert started.wait(10)
        clock.advance(6)  # from this thread: the deadline runs in the app's loop
        report = client.wait_for_delivery(topic="orders")
    assert report.outcome == "delivered"
    assert len(calls) == 2


# -- attempts given up at their deadline have an owner -------------------------------------


class StubbornBroker(MemoryBroker):
    """The in-memory broker, whose publish awaits a cleanup when it is cancelled (as client
    libraries do); `ended` says when its `finally` ran."""

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str) -> None:
        super().__init__(name, metadata, app_id=app_id)
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.ended: list[str] = []

    async def publish(
        self,
        topic: str,
        data: bytes,
        metadata: Mapping[str, str],
        *,
        decoded: Mapping[str, Any] | None = None,
    ) -> str:
        # Futures no one else holds: only whoever keeps this task keeps it alive.
        loop = asyncio.get_running_loop()
        self.entered.set()
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            self.cancelled.set()
            await loop.create_future()  # the cleanup: ended by a second cancellation only
        finally:
            self.ended.append("finally")
        return "never"


async def test_an_attempt_given_up_at_its_deadline_is_stopped_before_the_app_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    monkeypatch.setitem(BROKER_TYPES, "pubsub.stubborn", (f"{__name__}:StubbornBroker", None))
    component = (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\n"
        "spec: {type: pubsub.stubborn, version: v1}\n"
    )
    spec = OUTBOUND.format(retries=0, extra=", timeout: short")
    app, _ = publishing_app(folder_with(tmp_path, component, resiliency(spec)))
    clock = FakeClock()
    async with DaprTest(app, clock=clock) as test:
        broker = app.state.fastapi_dapr.backend.running().brokers["pubsub"]
        assert isinstance(broker, StubbornBroker)
        posting = asyncio.create_task(test.client.post("/v1.0/publish/pubsub/orders", json={"n": 1}))
        await broker.entered.wait()
        clock.advance(3.5)
        response = await posting
        assert response.status_code == 500
        assert response.json()["message"].endswith(": context deadline exceeded")  # answered at once
        await broker.cancelled.wait()
        gc.collect()
        assert "Task was destroyed but it is pending" not in caplog.text  # it has an owner
        assert broker.ended == []  # and goes on cleaning up
    assert broker.ended == ["finally"]  # cancelled again and awaited before the app stopped
    gc.collect()
    assert "Task was destroyed" not in caplog.text


async def test_an_attempt_that_will_not_stop_delays_the_shutdown_by_the_grace_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastapi_dapr.sidecar.policy import Abandoned, with_timeout
    from fastapi_dapr.sidecar.policy_errors import AttemptTimeout

    release = asyncio.Event()

    class Answer:
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    answer = Answer()

    async def deaf() -> Answer:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # refuses every cancellation
                await release.wait()
        return answer

    abandoned = Abandoned()
    clock = FakeClock()
    call = asyncio.create_task(with_timeout(deaf, 1.0, clock, abandoned))
    await asyncio.sleep(0)
    clock.advance(1.0)
    with pytest.raises(AttemptTimeout):
        await call
    assert len(abandoned) == 1
    await asyncio.wait_for(abandoned.close(0.05), 5)  # bounded: the grace, not for ever
    assert "1 attempt(s) given up at their deadline did not stop within 0.05s" in caplog.text
    release.set()
    await asyncio.wait_for(abandoned.close(5), 5)  # ends it, and closes the answer it gave late
    assert (len(abandoned), answer.closed) == (0, True)
