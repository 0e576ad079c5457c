"""Prometheus metrics at GET /metrics (`Dapr(app, metrics=True)`): each count checked exactly
after publishing, delivering, retrying, dropping, dead-lettering and invoking, scraped and parsed
as Prometheus parses the text format."""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response

from fastapi_dapr import DROP, RETRY, BulkEntry, CloudEvent, Dapr, InvocationSettings
from fastapi_dapr.sidecar.metrics import LATENCY_BUCKETS_MS, Histogram, Metrics
from fastapi_dapr.testing import DaprTest, FakeClock

from ..servers import serve

# -- a small parser of the text exposition format (version 0.0.4) ------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')

Labels = frozenset[tuple[str, str]]


class Scrape:
    """Samples by name and label set; the TYPE of each family."""

    def __init__(self, text: str) -> None:
        self.samples: dict[str, dict[Labels, float]] = {}
        self.types: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                self.types[name] = kind
                continue
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            assert match is not None, f"not a sample line: {line!r}"
            name, labels_text, value = match.groups()
            labels = {}
            rest = labels_text or ""
            while rest:
                label = _LABEL.match(rest)
                assert label is not None, f"bad labels in {line!r}"
                labels[label.group(1)] = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], label[2])
                rest = rest[label.end() :]
            key = frozenset(labels.items())
            assert key not in self.samples.setdefault(name, {}), f"repeated sample {line!r}"
            self.samples[name][key] = float(value.replace("+Inf", "inf"))

    def series(self, metric: str, /, **labels: str) -> dict[Labels, float]:
        """Every sample of `metric` whose labels include `labels`."""
        wanted = set(labels.items())
        return {key: value for key, value in self.samples.get(metric, {}).items() if wanted <= key}

    def value(self, metric: str, /, **labels: str) -> float:
        """The sum of the matching samples (0 when none)."""
        return sum(self.series(metric, **labels).values())

    def check_histogram(self, name: str) -> None:
        """Buckets cumulative and ending in +Inf, which equals _count; a _sum for each series."""
        assert self.types[name] == "histogram"
        by_series: dict[Labels, list[tuple[float, float]]] = {}
        for key, value in self.samples.get(f"{name}_bucket", {}).items():
            labels = dict(key)
            bound = float(labels.pop("le").replace("+Inf", "inf"))
            by_series.setdefault(frozenset(labels.items()), []).append((bound, value))
        assert by_series, f"no {name} series"
        for key, buckets in by_series.items():
            buckets.sort()
            assert [bound for bound, _ in buckets] == [*LATENCY_BUCKETS_MS, math.inf]
            counts = [count for _, count in buckets]
            assert counts == sorted(counts), f"{name} buckets are not cumulative: {counts}"
            assert self.samples[f"{name}_count"][key] == counts[-1]
            assert self.samples[f"{name}_sum"][key] >= 0


async def scrape(client: httpx.AsyncClient, **headers: str) -> Scrape:
    answer = await client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(answer.text)


# -- the registry itself ------------------------------------------------------------------


def test_histogram_buckets_are_upper_bounds_and_cumulative() -> None:
    histogram = Histogram("h", "a test", ("a",), (1, 5, 10))
    for value in (0.5, 1, 1.01, 5, 7, 10, 11, 1000):
        histogram.observe(("x",), value)
    scrape = Scrape("# TYPE h histogram\n" + "\n".join(histogram.lines()))
    buckets = {dict(key)["le"]: value for key, value in scrape.samples["h_bucket"].items()}
    assert buckets == {"1": 2, "5": 4, "10": 6, "+Inf": 8}  # `le`: a value on a bound is in it
    assert scrape.value("h_count") == 8
    assert scrape.value("h_sum") == pytest.approx(1035.51)


def test_label_values_are_escaped() -> None:
    metrics = Metrics("app")
    metrics.settled("pubsub", 'a "quoted"\\topic\nwith a line break', "delivered")
    scrape = Scrape(metrics.render().decode())
    (key,) = scrape.series("fastapi_dapr_pubsub_messages_total")
    assert dict(key)["topic"] == 'a "quoted"\\topic\nwith a line break'


def test_every_family_has_help_and_type() -> None:
    text = Metrics("app").render().decode()
    names = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)
    helps = re.findall(r"^# HELP (\S+) ", text, re.MULTILINE)
    assert [name for name, _ in names] == helps
    assert {kind for _, kind in names} == {"counter", "histogram"}


# -- deliveries -------------------------------------------------------------------------------

RESILIENCY = """apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: policies}
spec:
  policies:
    retries:
      twice: {policy: constant, duration: 1s, maxRetries: 2}
  targets:
    components:
      pubsub: {inbound: {retry: twice}}
"""


def delivery_app(tmp_path: Path, **options: Any) -> tuple[FastAPI, list[int]]:
    """n=1 SUCCESS; n=2 RETRY, then SUCCESS; n=3 DROP (dead-lettered); n=4 RETRY for ever;
    on `plain` (no dead-letter topic) everything is dropped; 404 on `gone`."""
    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "resiliency.yaml").write_text(RESILIENCY)
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", resources_path=folder, metrics=True, **options)
    calls: list[int] = []

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead")
    async def on_order(event: CloudEvent[dict[str, int]]) -> Any:
        n = event.data["n"]
        calls.append(n)
        if (n == 2 and calls.count(2) == 1) or n == 4:
            return RETRY
        if n == 3:
            return DROP
        return None

    @dapr.subscribe("pubsub", "dead")
    async def on_dead(event: CloudEvent[dict[str, int]]) -> None:
        return None

    @dapr.subscribe("pubsub", "plain")
    async def on_plain(event: CloudEvent[dict[str, int]]) -> Any:
        return DROP

    @dapr.subscribe("pubsub", "gone", route="/nowhere-handled")
    async def on_gone(event: CloudEvent[dict[str, int]]) -> Any:
        return Response(status_code=404)

    return app, calls


async def test_publish_deliver_retry_drop_and_dead_letter_are_counted(tmp_path: Path) -> None:
    app, calls = delivery_app(tmp_path)
    async with DaprTest(app, clock=FakeClock()) as test:
        outcomes = [(await test.publish_and_wait("pubsub", "orders", {"n": n})).outcome for n in (1, 2, 3, 4)]
        assert outcomes == ["delivered", "delivered", "dead-lettered", "dead-lettered"]
        assert (await test.publish_and_wait("pubsub", "plain", {"n": 5})).outcome == "dropped"
        assert (await test.publish_and_wait("pubsub", "gone", {"n": 6})).outcome == "dropped"
        expired = {
            "specversion": "1.0",
            "id": "old",
            "source": "test",
            "type": "t",
            "data": {"n": 7},
            "expiration": (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
            .isoformat()
            .replace("+00:00", "Z"),
        }
        answer = await test.client.post(
            "/v1.0/publish/pubsub/plain",
            content=json.dumps(expired),
            headers={"content-type": "application/cloudevents+json"},
        )
        assert answer.status_code == 204
        assert (await test.wait_for_delivery(topic="plain")).outcome == "expired"
        for _ in range(2):  # n=3 and n=4, dead-lettered
            assert (await test.wait_for_delivery(topic="dead")).outcome == "delivered"
        missing = await test.client.post("/v1.0/publish/nosuch/orders", json={"n": 0})
        assert missing.status_code == 404
        metrics = await scrape(test.client)
    assert calls == [1, 2, 2, 3, 4, 4, 4]

    common = {"app_id": "orders", "component": "pubsub", "namespace": "default"}
    egress = "dapr_component_pubsub_egress_count"
    assert metrics.types[egress] == "counter"
    assert metrics.value(egress, **common, success="true", topic="orders") == 4
    assert metrics.value(egress, **common, success="true", topic="plain") == 2
    assert metrics.value(egress, **common, success="true", topic="gone") == 1
    assert metrics.value(egress, success="false") == 0
    assert metrics.value(egress, component="nosuch") == 0  # an unknown pubsub makes no series
    assert metrics.value(egress, topic="dead") == 0  # dead letters are not the publish API's

    ingress = "dapr_component_pubsub_ingress_count"

    def posts(topic: str, process_status: str, status: str) -> float:
        return metrics.value(ingress, **common, topic=topic, process_status=process_status, status=status)

    # One per POST to the app, as daprd's postman counts them.
    assert posts("orders", "success", "success") == 2  # n=1, and n=2 the second time
    assert posts("orders", "retry", "retry") == 4  # n=2 once, n=4 three times
    assert posts("orders", "drop", "success") == 1  # n=3: the app's own DROP
    assert posts("plain", "drop", "success") == 1
    assert posts("plain", "drop", "drop") == 1  # the expired message, not posted
    assert posts("gone", "drop", "drop") == 1  # a 404
    assert posts("dead", "success", "success") == 2
    assert metrics.value(ingress) == 12

    latency = "dapr_component_pubsub_ingress_latencies"
    metrics.check_histogram(latency)
    # Every POST is timed; the expired message, never posted, is not.
    assert metrics.value(f"{latency}_count") == 11
    assert metrics.value(f"{latency}_count", topic="plain", process_status="drop", status="drop") == 0
    metrics.check_histogram("dapr_component_pubsub_egress_latencies")
    assert metrics.value("dapr_component_pubsub_egress_latencies_count") == 7

    outcomes_metric = "fastapi_dapr_pubsub_messages_total"
    assert metrics.value(outcomes_metric, topic="orders", outcome="delivered") == 2
    assert metrics.value(outcomes_metric, topic="orders", outcome="dead-lettered") == 2
    assert metrics.value(outcomes_metric, topic="plain", outcome="dropped") == 1
    assert metrics.value(outcomes_metric, topic="plain", outcome="expired") == 1
    assert metrics.value(outcomes_metric, topic="gone", outcome="dropped") == 1
    assert metrics.value(outcomes_metric, topic="dead", outcome="delivered") == 2
    assert metrics.value(outcomes_metric) == 9

    assert metrics.value("fastapi_dapr_pubsub_delivery_retries_total", **common, topic="orders") == 3
    assert metrics.value("fastapi_dapr_pubsub_delivery_retries_total") == 3
    dead = "fastapi_dapr_pubsub_dead_letter_total"
    assert metrics.value(dead, **common, topic="orders", dead_letter_topic="dead", success="true") == 2
    assert metrics.value(dead) == 2

    activations = metrics.series("dapr_resiliency_activations_total")
    assert activations == {
        frozenset(
            {
                "app_id": "orders",
                "name": "policies",
                "policy": "retry",
                "namespace": "default",
                "flow_direction": "inbound",
                "target": "Pubsub_pubsub",
                "status": "",
            }.items()
        ): 3
    }


async def test_fastapi_dapr_default_retry_is_counted_but_is_no_resiliency_activation() -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", metrics=True)
    calls: list[int] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> Any:
        calls.append(1)
        return RETRY if len(calls) < 3 else None

    async with DaprTest(app, clock=FakeClock()) as test:
        assert (await test.publish_and_wait("pubsub", "orders", {"n": 1})).outcome == "delivered"
        metrics = await scrape(test.client)
    assert metrics.value("fastapi_dapr_pubsub_delivery_retries_total", topic="orders") == 2
    assert metrics.value("dapr_component_pubsub_ingress_count", process_status="retry") == 2
    assert metrics.value("dapr_component_pubsub_ingress_count", process_status="success") == 1
    assert metrics.series("dapr_resiliency_activations_total") == {}


async def test_bulk_publish_and_bulk_delivery(tmp_path: Path) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", metrics=True)
    got: list[int] = []

    @dapr.subscribe("pubsub", "batch", bulk=True)
    async def on_batch(entries: list[BulkEntry[dict[str, int]]]) -> None:
        got.extend(entry.event.data["n"] for entry in entries)

    async with DaprTest(app, clock=FakeClock()) as test:
        entries = [
            {"entryId": str(n), "event": {"n": n}, "contentType": "application/json"} for n in (1, 2, 3)
        ]
        answer = await test.client.post("/v1.0-alpha1/publish/bulk/pubsub/batch", json=entries)
        assert answer.status_code == 204, answer.text
        for _ in range(3):
            assert (await test.wait_for_delivery(topic="batch")).outcome == "delivered"
        metrics = await scrape(test.client)
    assert sorted(got) == [1, 2, 3]
    assert metrics.value("dapr_component_pubsub_egress_bulk_count", success="true", topic="batch") == 1
    assert metrics.value("dapr_component_pubsub_egress_bulk_event_count", success="true") == 3
    assert metrics.value("dapr_component_pubsub_egress_count") == 0  # entries are the bulk API's
    metrics.check_histogram("dapr_component_pubsub_egress_bulk_latencies")
    ingress = metrics.value("dapr_component_pubsub_ingress_count", topic="batch", process_status="success")
    assert ingress == 3  # each entry, as one message


# -- invocation -------------------------------------------------------------------------------


async def test_invocations_by_target_and_status() -> None:
    upstream = FastAPI()

    @upstream.get("/{name}")
    async def anything(name: str) -> Response:
        return Response(status_code=409 if name == "conflict" else 200)

    async with serve(upstream) as billing_url:
        app = FastAPI()
        dapr = Dapr(
            app,
            app_id="orders",
            metrics=True,
            invocation=InvocationSettings(apps={"billing": billing_url, "down": "http://127.0.0.1:9"}),
        )

        @app.get("/hello")
        async def hello() -> dict[str, int]:
            return {"ok": 1}

        async with DaprTest(app) as test:
            assert (await test.client.get("/v1.0/invoke/orders/method/hello")).status_code == 200
            assert (await test.client.get("/v1.0/invoke/orders/method/missing")).status_code == 404
            assert (await dapr.invoke("orders", "hello")).status_code == 200
            assert (await test.client.get("/v1.0/invoke/billing/method/ok")).status_code == 200
            assert (await test.client.get("/v1.0/invoke/billing/method/conflict")).status_code == 409
            assert (await dapr.invoke("billing", "ok")).status_code == 200
            assert (await test.client.get("/v1.0/invoke/nobody/method/x")).status_code == 500
            metrics = await scrape(test.client)

    sent = "dapr_service_invocation_req_sent_total"
    received = "dapr_service_invocation_res_recv_total"
    assert metrics.types[sent] == metrics.types[received] == "counter"
    assert metrics.series(sent) == {
        frozenset({"app_id": "orders", "dst_app_id": "orders", "type": "unary"}.items()): 3,
        frozenset({"app_id": "orders", "dst_app_id": "billing", "type": "unary"}.items()): 3,
    }
    assert metrics.value(received, src_app_id="orders", status="200", type="unary") == 2
    assert metrics.value(received, src_app_id="orders", status="404") == 1
    assert metrics.value(received, src_app_id="billing", status="200") == 2
    assert metrics.value(received, src_app_id="billing", status="409") == 1
    assert metrics.value(received) == 6
    assert metrics.value(sent, dst_app_id="nobody") == 0  # not found: nothing sent
    metrics.check_histogram("dapr_service_invocation_res_recv_latency_ms")
    assert metrics.value("dapr_service_invocation_res_recv_latency_ms_count", src_app_id="billing") == 3


async def test_an_invocation_that_gets_no_answer_is_sent_but_not_received() -> None:
    app = FastAPI()
    dapr = Dapr(
        app, app_id="orders", metrics=True, invocation=InvocationSettings(apps={"down": "http://127.0.0.1:9"})
    )
    async with DaprTest(app, clock=FakeClock()) as test:
        answer = await test.client.get("/v1.0/invoke/down/method/x")
        assert answer.status_code == 500
        metrics = await scrape(test.client)
    assert dapr.metrics is not None
    # daprd's built-in retry of an app it can't connect to: four tries, each one sent.
    assert metrics.value("dapr_service_invocation_req_sent_total", dst_app_id="down") == 4
    assert metrics.value("dapr_service_invocation_res_recv_total", src_app_id="down") == 0


async def test_invocation_retries_and_circuit_breaker_are_resiliency_activations(tmp_path: Path) -> None:
    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "resiliency.yaml").write_text(
        """apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: calls}
spec:
  policies:
    retries:
      twice: {policy: constant, duration: 1s, maxRetries: 2}
    circuitBreakers:
      quick: {maxRequests: 1, timeout: 30s, trip: consecutiveFailures >= 3}
  targets:
    apps:
      orders: {retry: twice, circuitBreaker: quick}
"""
    )
    app = FastAPI()
    Dapr(app, app_id="orders", metrics=True, resources_path=folder)

    @app.get("/flaky")
    async def flaky() -> Response:
        return Response(status_code=503)

    async with DaprTest(app, clock=FakeClock()) as test:
        assert (await test.client.get("/v1.0/invoke/orders/method/flaky")).status_code == 503
        metrics = await scrape(test.client)
    common = {"app_id": "orders", "name": "calls", "flow_direction": "outbound", "target": "app_orders"}
    activations = "dapr_resiliency_activations_total"
    assert metrics.value(activations, **common, policy="retry", status="") == 2
    assert metrics.value(activations, **common, policy="circuitbreaker", status="open") == 1
    assert metrics.value(activations) == 3
    assert metrics.value("dapr_service_invocation_req_sent_total", dst_app_id="orders") == 3


# -- who may scrape ------------------------------------------------------------------------


async def test_metrics_are_off_by_default() -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders")
    assert dapr.metrics is None
    async with DaprTest(app) as test:
        answer = await test.client.get("/metrics")
    assert answer.status_code == 404  # the app's own 404: no such route


async def test_the_app_keeps_its_own_metrics_route_when_metrics_are_off() -> None:
    app = FastAPI()
    Dapr(app, app_id="orders")

    @app.get("/metrics")
    async def own() -> dict[str, str]:
        return {"mine": "yes"}

    async with DaprTest(app) as test:
        assert (await test.client.get("/metrics")).json() == {"mine": "yes"}


@pytest.mark.parametrize(
    ("client", "headers", "status"),
    [
        (("127.0.0.1", 5000), {}, 200),
        (("10.0.0.7", 5000), {}, 403),  # not local
        (("127.0.0.1", 5000), {"x-forwarded-for": "10.0.0.7"}, 403),  # through a proxy
        (("127.0.0.1", 5000), {"origin": "https://evil.example"}, 403),  # a web page
    ],
)
async def test_without_a_token_only_local_clients_may_scrape(
    client: tuple[str, int], headers: Mapping[str, str], status: int
) -> None:
    app = FastAPI()
    Dapr(app, app_id="orders", metrics=True, api_token="")
    async with DaprTest(app) as test:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as other:
            answer = await other.get("/metrics", headers=headers)
    assert answer.status_code == status
    if status == 403:
        assert answer.json()["errorCode"] == "ERR_FORBIDDEN"
        assert "dapr_" not in answer.text
    del test


async def test_with_a_token_scraping_needs_it() -> None:
    app = FastAPI()
    Dapr(app, app_id="orders", metrics=True, api_token="s3cret")
    async with DaprTest(app) as test:
        refused = await test.client.get("/metrics")
        assert refused.status_code == 401
        assert refused.text == "invalid api token\n"
        wrong = await test.client.get("/metrics", headers={"dapr-api-token": "nope"})
        assert wrong.status_code == 401
        metrics = await scrape(test.client, **{"dapr-api-token": "s3cret"})
        assert "dapr_component_pubsub_egress_count" in metrics.types
        posted = await test.client.post("/metrics", headers={"dapr-api-token": "s3cret"})
        assert posted.status_code == 405
        assert posted.json()["errorCode"] == "ERR_METHOD_NOT_ALLOWED"
