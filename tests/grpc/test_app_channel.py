"""The gRPC app channel: a `dapr.ext.grpc.App` behind `fastapi-dapr sidecar --app-protocol grpc`
gets its deliveries through `OnTopicEvent` and its invocations through `OnInvoke`, as behind daprd."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import pytest

from ..processes import ChildProcess
from ..sidecar.test_standalone import ROOT, environment, free_port, running
from .kit import GrpcSidecar, run_sdk

pytestmark = pytest.mark.process


class ExtApp(ChildProcess):
    """tests/apps/grpc_ext_app.py on a free port (`port`); `records(kind, n)` what it printed."""

    def __init__(self) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "tests.apps.grpc_ext_app"]
        super().__init__(
            argv, ready=b"grpc ext app: listening", env=environment(APP_PORT=str(self.port)), cwd=ROOT
        )

    def _records(self, kind: str) -> list[dict[str, Any]]:
        found = (json.loads(line[len(b"record ") :]) for line in self.output if line.startswith(b"record "))
        return [record for record in found if record["kind"] == kind]

    async def records(self, kind: str, count: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
        """The first `count` records of `kind`, once the app has printed them."""
        async with self._printed:
            await asyncio.wait_for(self._printed.wait_for(lambda: len(self._records(kind)) >= count), timeout)
        return self._records(kind)[:count]


def sidecar_for(app: ExtApp, *extra: str, **env: str | None) -> GrpcSidecar:
    return GrpcSidecar("extapp", app.port, "--app-protocol", "grpc", *extra, **env)


async def test_a_grpc_app_gets_deliveries_retried_dropped_and_dead_lettered() -> None:
    app = ExtApp()
    sidecar = sidecar_for(app, APP_API_TOKEN="app-secret")
    async with running(app, sidecar), sidecar.client() as client:
        metadata = (await client.get("/v1.0/metadata")).json()
        assert metadata["appConnectionProperties"]["protocol"] == "grpc"
        listed = {s["topic"]: s for s in metadata["subscriptions"]}
        assert set(listed) == {"orders", "widgets", "flaky", "poison", "poison-dead", "slow"}
        # The paths the app gave: "" (no routes: daprd's default), the rule's handler name.
        assert listed["orders"]["rules"] == [{"match": "", "path": ""}]
        assert listed["widgets"]["rules"] == [{"match": 'event.data.size == "big"', "path": "big"}]
        assert listed["poison"]["deadLetterTopic"] == "poison-dead"

        for topic, data in [
            ("orders", {"n": 1}),
            ("widgets", {"size": "big"}),
            ("flaky", {"n": 2}),
            ("poison", {"n": 3}),
        ]:
            answer = await client.post(f"/v1.0/publish/pubsub/{topic}", json=data)
            assert answer.status_code == 204, answer.text
        answer = await client.post(
            "/v1.0/publish/pubsub/orders", content=b"plain words", headers={"content-type": "text/plain"}
        )
        assert answer.status_code == 204, answer.text

        both = await app.records("orders", 2)  # delivered concurrently: in any order
        first, text = sorted(both, key=lambda record: record["content_type"])
        assert (first["data"], first["topic"], first["pubsub"]) == ({"n": 1}, "orders", "pubsub")
        assert (first["source"], first["type"], first["content_type"]) == (
            "extapp",
            "com.dapr.event.sent",
            "application/json",
        )
        assert first["metadata"]["dapr-api-token"] == "app-secret"  # APP_API_TOKEN on every call
        assert first["metadata"]["pubsubname"] == "pubsub"
        assert first["extensions"]["topic"] == "orders"  # the CloudEvent's other attributes
        assert (text["data"], text["content_type"]) == ("plain words", "text/plain")
        (big,) = await app.records("big")
        assert big["data"] == {"size": "big"}  # routed by the rule to its handler
        (retried,) = await app.records("flaky-retry")
        (flaky,) = await app.records("flaky")
        assert (flaky["id"], flaky["attempt"]) == (retried["id"], 2)  # RETRY, then delivered again
        (dropped,) = await app.records("poison")
        (dead,) = await app.records("dead-letters")
        assert (dead["id"], dead["data"]) == (dropped["id"], {"n": 3})  # DROP: to the dead-letter topic


async def test_a_grpc_app_is_invoked_over_http_and_by_the_sdk() -> None:
    app = ExtApp()
    sidecar = sidecar_for(app, APP_API_TOKEN="app-secret", DAPR_API_TOKEN="api-secret")
    async with running(app, sidecar), sidecar.client("api-secret") as client:
        answer = await client.post(
            "/v1.0/invoke/extapp/method/echo?x=1", content=b"hello", headers={"content-type": "text/plain"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-app"] == "yes"  # the app's response metadata
        assert answer.json() == {"data": "hello", "content_type": "text/plain", "token": "app-secret"}
        (echoed,) = await app.records("echo")
        assert echoed["metadata"]["dapr-content-type"] == "text/plain"  # daprd's prefix for HTTP headers
        assert echoed["metadata"]["dapr-caller-app-id"] == "extapp"

        # The app's errors as daprd answers an HTTP caller: the code's HTTP status, the status as JSON.
        missing = await client.get("/v1.0/invoke/extapp/method/missing")
        assert missing.status_code == 501  # UNIMPLEMENTED
        assert missing.json()["code"] == 12
        failing = await client.post("/v1.0/invoke/extapp/method/fail")
        assert failing.status_code == 500  # UNKNOWN: the handler raised
        assert failing.json()["code"] == 2

        code = """
            import json
            from dapr.clients import DaprClient
            with DaprClient() as client:
                answer = client.invoke_method(
                    "extapp", "echo", data="from the sdk", content_type="text/plain", http_verb="POST"
                )
                print(json.dumps({"body": json.loads(answer.text()), "type": answer.content_type}))
        """
        for protocol in ("http", "grpc"):
            got = await run_sdk(
                code,
                http_port=sidecar.port,
                grpc_port=sidecar.grpc_port,
                token="api-secret",
                DAPR_API_METHOD_INVOCATION_PROTOCOL=protocol,
            )
            assert got["body"] == {
                "data": "from the sdk",
                "content_type": "text/plain",
                "token": "app-secret",
            }


async def test_the_sdk_publishes_over_grpc_to_a_grpc_app() -> None:
    app = ExtApp()
    sidecar = sidecar_for(app)
    async with running(app, sidecar):
        code = """
            import json
            from dapr.clients import DaprClient
            with DaprClient() as client:
                data = json.dumps({"via": "grpc"})
                client.publish_event("pubsub", "orders", data, data_content_type="application/json")
                print(json.dumps("published"))
        """
        assert await run_sdk(code, http_port=sidecar.port, grpc_port=sidecar.grpc_port) == "published"
        (got,) = await app.records("orders")
        assert got["data"] == {"via": "grpc"}


async def test_the_sidecar_waits_for_the_grpc_app_and_delivers_once_it_listens() -> None:
    app = ExtApp()
    sidecar = sidecar_for(app, ready=b"Dapr API listening")
    async with running(sidecar), sidecar.client() as client:
        answer = await client.post("/v1.0/publish/pubsub/orders", json={"early": True})
        assert answer.status_code == 204, answer.text
        async with running(app):
            await sidecar.printed(b": ready: ")
            (got,) = await app.records("orders")
            assert got["data"] == {"early": True}


async def test_a_signal_stops_it_once_in_flight_grpc_calls_are_done() -> None:
    app = ExtApp()
    sidecar = sidecar_for(app, "--dapr-graceful-shutdown-seconds", "5")
    async with running(app, sidecar), sidecar.client() as client:
        assert (await client.post("/v1.0/publish/pubsub/slow", json={})).status_code == 204
        call = asyncio.ensure_future(client.get("/v1.0/invoke/extapp/method/slow"))
        await app.records("slow-delivery-start")  # a delivery in flight
        await app.records("slow-invoke-start")  # and an invocation
        sidecar.send_signal(signal.SIGTERM)
        await sidecar.printed(b"SIGTERM received: stopping")
        answer = await call  # the call in flight got its answer through the channel
        assert (answer.status_code, answer.json()) == (200, "slow answer")
        assert await sidecar.wait() == 0
        await app.records("slow-delivery-done")
    assert "app id extapp: stopped" in sidecar.text
    assert "Traceback" not in sidecar.text
