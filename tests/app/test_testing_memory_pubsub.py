"""`memory_pubsub=` of the test helpers: an app whose resources say `pubsub.redis` (or a type not
served here) is tested on the in-memory broker, with no Redis: the component keeps its name, its
scopes and its subscriptions, and its Redis metadata is not read."""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from fastapi_dapr import CloudEvent, Dapr, ResourceError
from fastapi_dapr.testing import DaprTest, DaprTestClient, FakeClock


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound by no listener: a connection there is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # held, never listening, so nobody else takes it meanwhile
        yield sock.getsockname()[1]


def write_resources(folder: Path, redis_port: int) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "pubsub.yaml").write_text(
        textwrap.dedent(f"""\
            apiVersion: dapr.io/v1alpha1
            kind: Component
            metadata:
              name: orders-bus
            spec:
              type: pubsub.redis
              version: v1
              metadata:
                - name: redisHost
                  value: 127.0.0.1:{redis_port}
                - name: redisPassword
                  secretKeyRef: {{name: redis-password}}
                - name: allowedTopics
                  value: orders,audit
            auth:
              secretStore: vault-nobody-runs
            ---
            apiVersion: dapr.io/v1alpha1
            kind: Component
            metadata:
              name: events
            spec:
              type: pubsub.pulsar
              version: v1
              metadata:
                - name: brokers
                  value: 127.0.0.1:{redis_port}
            ---
            apiVersion: dapr.io/v2alpha1
            kind: Subscription
            metadata:
              name: audit
            spec:
              pubsubname: orders-bus
              topic: audit
              routes:
                default: /audit
        """)
    )
    return folder


def shop(resources: Path) -> FastAPI:
    app = FastAPI()
    dapr = Dapr(app, app_id="shop", resources_path=resources)
    app.state.audited = []

    @dapr.subscribe("orders-bus", "orders")
    async def on_order(event: CloudEvent[dict[str, str]]) -> None:
        await dapr.publish("events", "order-placed", event.data)

    @app.post("/audit")
    async def audit(event: CloudEvent[str]) -> None:  # the declarative Subscription's route
        app.state.audited.append(event.data)

    return app


def test_without_the_swap_the_app_needs_its_redis(tmp_path: Path, closed_port: int) -> None:
    resources = tmp_path / "resources"
    resources.mkdir()
    (resources / "pubsub.yaml").write_text(
        textwrap.dedent(f"""\
            apiVersion: dapr.io/v1alpha1
            kind: Component
            metadata:
              name: orders-bus
            spec:
              type: pubsub.redis
              version: v1
              metadata:
                - name: redisHost
                  value: 127.0.0.1:{closed_port}
            ---
            apiVersion: dapr.io/v1alpha1
            kind: Component
            metadata:
              name: events
            spec:
              type: pubsub.in-memory
              version: v1
        """)
    )
    app = shop(resources)
    refused = rf"Component 'orders-bus': spec: cannot reach Redis at 127.0.0.1:{closed_port}"
    with pytest.raises(ResourceError, match=refused), DaprTestClient(app):
        pass
    with DaprTestClient(app, memory_pubsub=True) as client:  # the same app, asking for no Redis
        assert client.publish_and_wait("orders-bus", "orders", {"id": "o-0"}).outcome == "delivered"


def test_the_swap_runs_redis_components_on_the_in_memory_broker(tmp_path: Path, closed_port: int) -> None:
    app = shop(write_resources(tmp_path / "resources", closed_port))
    with DaprTestClient(app, memory_pubsub=True) as client:
        report = client.publish_and_wait("orders-bus", "orders", {"id": "o-1"})
        assert report.outcome == "delivered"
        (placed,) = client.published("events", "order-placed")  # the other swapped component
        assert placed.data == {"id": "o-1"}
        # The declarative Subscription of the component, to its route.
        assert client.publish_and_wait("orders-bus", "audit", "seen").outcome == "delivered"
        assert app.state.audited == ["seen"]
        # Its topic scopes stay: allowedTopics is orders,audit.
        refused = client.post("/v1.0/publish/orders-bus/refunds", json={})
        assert refused.status_code == 403
        assert refused.json()["errorCode"] == "ERR_PUBSUB_FORBIDDEN"
        components = client.get("/v1.0/metadata").json()["components"]
    assert sorted((c["name"], c["type"]) for c in components) == [
        ("events", "pubsub.in-memory"),
        ("orders-bus", "pubsub.in-memory"),
    ]


async def test_the_async_helper_swaps_them_too(tmp_path: Path, closed_port: int) -> None:
    app = shop(write_resources(tmp_path / "resources", closed_port))
    async with DaprTest(app, memory_pubsub=True, clock=FakeClock()) as test:
        report = await test.publish_and_wait("orders-bus", "orders", {"id": "o-2"})
    assert report.outcome == "delivered"
    assert [m.data for m in test.published("events")] == [{"id": "o-2"}]


def test_a_swap_by_name_leaves_the_others_alone(tmp_path: Path, closed_port: int) -> None:
    resources = tmp_path / "resources"
    write_resources(resources, closed_port)
    text = (resources / "pubsub.yaml").read_text()
    (resources / "pubsub.yaml").write_text(text.replace("type: pubsub.pulsar", "type: pubsub.in-memory"))
    app = shop(resources)
    with DaprTestClient(app, memory_pubsub=["orders-bus"]) as client:
        assert client.publish_and_wait("orders-bus", "orders", {"id": "o-3"}).outcome == "delivered"
    # Named alone, a component of a type not served here is still refused.
    (resources / "pubsub.yaml").write_text(text)
    unsupported = "Component 'events': spec: unsupported pub/sub type 'pubsub.pulsar'"
    with pytest.raises(ResourceError, match=unsupported), DaprTestClient(app, memory_pubsub="orders-bus"):
        pass


def test_a_name_that_is_no_pubsub_component_is_refused(tmp_path: Path, closed_port: int) -> None:
    app = shop(write_resources(tmp_path / "resources", closed_port))
    unknown = "memory_pubsub names 'orders': the app has no pub/sub component of that name"
    with (
        pytest.raises(ValueError, match=unknown) as info,
        DaprTestClient(app, memory_pubsub=["orders-bus", "orders"]),
    ):
        pass
    assert "'orders-bus', 'events'" in str(info.value)


def test_the_swap_and_the_clock_last_for_the_helper_s_run_only(tmp_path: Path, closed_port: int) -> None:
    app = shop(write_resources(tmp_path / "resources", closed_port))
    clock = FakeClock()
    with DaprTestClient(app, memory_pubsub=True, clock=clock) as client:
        assert client.dapr.backend.running().clock is clock
    with pytest.raises(ResourceError, match="Component 'orders-bus'"), DaprTestClient(app):
        pass  # its secret store is not loaded: the swap is over
    app = FastAPI()
    Dapr(app, app_id="plain")
    with DaprTestClient(app, clock=clock) as client:
        assert client.dapr.backend.running().clock is clock
    with DaprTestClient(app) as client:
        assert client.dapr.backend.running().clock is not clock
