"""What the app says and checks as it starts: one line saying what runs (embedded or remote
mode, and why), a warning when in-memory brokers run in one of several server workers, and a
refusal of the app's routes the embedded sidecar's API would answer instead."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from starlette.staticfiles import StaticFiles

from fastapi_dapr import CloudEvent, Dapr, DaprError, DaprRouter
from fastapi_dapr.sidecar.startup import server_workers

RESOURCES = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: secrets}
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - {name: secretsFile, value: 'SECRETS'}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: events}
spec: {type: pubsub.in-memory, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata: {name: carrier}
spec: {version: v1alpha1, baseUrl: 'http://user:secret@127.0.0.1:9/carrier'}
"""


def startup_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.getMessage().startswith(("embedded mode", "remote mode"))
    ]


def test_embedded_mode_says_what_runs_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAPR_HTTP_PORT", raising=False)
    (tmp_path / "secrets.json").write_text("{}")
    (tmp_path / "resources.yaml").write_text(RESOURCES.replace("SECRETS", str(tmp_path / "secrets.json")))
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", resources_path=tmp_path, metrics=True)

    @dapr.subscribe("events", "orders", dead_letter_topic="orders-dead")
    async def on_order(event: CloudEvent) -> None: ...

    @dapr.subscribe("events", "orders", match='event.type == "big"', route="/orders/big")
    async def on_big_order(event: CloudEvent) -> None: ...

    with caplog.at_level(logging.INFO, logger="fastapi_dapr"), TestClient(app):
        (line,) = startup_lines(caplog)
    assert line == (
        "embedded mode (DAPR_HTTP_PORT is not set): app id 'checkout'; "
        "components: secrets (secretstores.local.file), events (pubsub.in-memory); "
        "HTTPEndpoints: carrier (http://127.0.0.1:9/carrier); "
        "subscriptions: events/orders -> /events/events/orders "
        "(1 routing rule, dead letters to orders-dead); "
        "Dapr HTTP API on the app's port; metrics at /metrics"
    )
    (record,) = [r for r in caplog.records if r.getMessage() == line]
    assert (record.levelno, record.name) == (logging.INFO, "fastapi_dapr")


def test_the_line_names_the_default_pubsub_the_grpc_port_and_what_chose_the_mode(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("grpc")
    monkeypatch.setenv("DAPR_HTTP_PORT", "3500")  # set, but the mode given wins
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", mode="embedded", grpc_port=0, serve_api=False)
    with caplog.at_level(logging.INFO, logger="fastapi_dapr"), TestClient(app):
        (line,) = startup_lines(caplog)
        port = dapr.grpc_port
    assert line == (
        "embedded mode (mode='embedded'): app id 'orders'; components: pubsub (pubsub.in-memory); "
        "HTTPEndpoints: none; subscriptions: none; Dapr HTTP API not served (serve_api=False); "
        f"gRPC API on 127.0.0.1:{port}"
    )


def test_remote_mode_says_so_with_the_variable_that_chose_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAPR_HTTP_PORT", "3999")
    monkeypatch.delenv("DAPR_HTTP_ENDPOINT", raising=False)
    app = FastAPI()
    Dapr(app, app_id="orders")
    with caplog.at_level(logging.INFO, logger="fastapi_dapr"), TestClient(app):
        (line,) = startup_lines(caplog)
    assert line == (
        "remote mode (DAPR_HTTP_PORT=3999): app id 'orders' under daprd at http://127.0.0.1:3999; "
        "nothing of the embedded sidecar runs"
    )


# -- several workers ------------------------------------------------------------------------------


def _called_from(module: str, function: str, argument: str, value: Any) -> Any:
    """What `server_workers()` says when called from `function` of `module`, given `value`
    as its `argument` (the server's own objects, as they are on a worker's call stack)."""
    namespace: dict[str, Any] = {"__name__": module}
    exec(f"def {function}({argument}, target):\n    return target()\n", namespace)
    return namespace[function](value, server_workers)


def test_a_worker_of_several_is_recognised_from_the_server_that_started_it() -> None:
    uvicorn = "uvicorn._subprocess", "subprocess_started", "config"
    assert _called_from(*uvicorn, SimpleNamespace(workers=3, should_reload=False)) == (
        3,
        "uvicorn --workers 3",
    )
    assert _called_from(*uvicorn, SimpleNamespace(workers=1, should_reload=False)) is None
    assert _called_from(*uvicorn, SimpleNamespace(workers=4, should_reload=True)) is None  # --reload: one
    gunicorn = "gunicorn.arbiter", "spawn_worker", "self"
    assert _called_from(*gunicorn, SimpleNamespace(num_workers=2)) == (2, "gunicorn --workers 2")
    assert _called_from("elsewhere", "subprocess_started", "config", SimpleNamespace(workers=3)) is None
    assert server_workers() is None  # pytest runs no workers


# -- routes the sidecar would answer ---------------------------------------------------------------


def refusal(app: FastAPI) -> str:
    with pytest.raises(DaprError) as failure, TestClient(app):
        pass
    return str(failure.value)


def test_an_app_route_under_the_api_paths_is_refused_at_start_naming_it() -> None:
    app = FastAPI()
    Dapr(app, app_id="orders")

    @app.get("/v1.0/metadata")
    async def my_metadata() -> dict[str, str]:
        return {}

    @app.post("/v1.0-alpha1/publish/x/{topic}")
    async def my_publish(topic: str) -> None: ...

    text = refusal(app)
    assert text.startswith(
        "the embedded sidecar serves Dapr's HTTP API on the app's port, in front of the app"
    )
    name = f"{__name__}.test_an_app_route_under_the_api_paths_is_refused_at_start_naming_it"
    assert (
        f"GET /v1.0/metadata (endpoint {name}.<locals>.my_metadata), shadowed by Dapr's HTTP API under /v1.0/"
        in text
    )
    assert (
        f"POST /v1.0-alpha1/publish/x/{{topic}} (endpoint {name}.<locals>.my_publish), "
        "shadowed by Dapr's HTTP API under /v1.0-alpha1/" in text
    )
    assert "Dapr(app, serve_api=False)" in text


@pytest.mark.parametrize(
    "add",
    [
        lambda app: app.include_router(_router("/v1.0")),
        lambda app: app.mount("/v1.0", StaticFiles(directory=Path(__file__).parent)),
        lambda app: app.mount("/api", _sub_app("/x")) or app.mount("", _sub_app("/v1.0/x")),
        lambda app: app.add_api_route("/v1.0", _endpoint, methods=["GET"]),
        lambda app: app.add_api_route("/v1.0-beta1/{rest:path}", _endpoint, methods=["PUT"]),
    ],
    ids=["router prefix", "mount", "under a mount at the root", "the version itself", "a path parameter"],
)
def test_routers_mounts_and_parameters_are_checked_too(add: Any) -> None:
    app = FastAPI()
    Dapr(app, app_id="orders")
    add(app)
    assert "shadowed by Dapr's HTTP API under /v1.0" in refusal(app)


def test_what_is_not_under_the_api_paths_in_a_mount_is_not_refused() -> None:
    app = FastAPI()
    Dapr(app, app_id="orders")
    app.mount("/api", _sub_app("/v1.0/x"))
    app.include_router(_router("/v2.0"))
    with TestClient(app) as client:
        assert client.get("/api/v1.0/x").status_code == 200


def _endpoint() -> None: ...


def _router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix)
    router.add_api_route("/things", _endpoint, methods=["GET"])
    return router


def _sub_app(path: str) -> FastAPI:
    sub = FastAPI()
    sub.add_api_route(path, _endpoint, methods=["GET"])
    return sub


def test_metrics_shadow_the_apps_own_metrics_route() -> None:
    app = FastAPI()
    Dapr(app, app_id="orders", metrics=True)
    app.add_api_route("/metrics", _endpoint, methods=["GET"])
    assert f"GET /metrics (endpoint {__name__}._endpoint), shadowed by the sidecar's metrics " in (
        refusal(app)
    )


def test_the_packages_own_routes_and_routes_that_only_look_alike_are_not_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders")
    router = DaprRouter(prefix="/billing")

    @router.subscribe("pubsub", "payments")
    async def on_payment(event: CloudEvent) -> None: ...

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="dead")
    async def on_order(event: CloudEvent) -> None: ...

    app.include_router(router)
    for path in ("/dapr/config", "/v1.0x", "/v1.0-gamma1/x", "/{path:path}", "/metrics"):
        app.add_api_route(path, _endpoint, methods=["GET"])
    app.add_api_websocket_route("/v1.0/ws", _endpoint)  # the sidecar leaves WebSockets to the app
    with caplog.at_level(logging.INFO, logger="fastapi_dapr"), TestClient(app) as client:
        assert client.get("/dapr/subscribe").status_code == 200
    assert startup_lines(caplog)


def test_without_the_api_on_the_apps_port_or_in_remote_mode_nothing_is_shadowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for settings in ({"serve_api": False}, {"mode": "remote"}):
        app = FastAPI()
        Dapr(app, app_id="orders", **settings)
        app.add_api_route("/v1.0/metadata", _endpoint, methods=["GET"])
        with TestClient(app) as client:
            assert client.get("/v1.0/metadata").status_code == 200  # the app's own


def test_a_subscription_route_under_the_api_paths_is_refused() -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders")

    @dapr.subscribe("pubsub", "orders", route="/v1.0/orders")
    async def on_order(event: CloudEvent) -> None: ...

    assert "POST /v1.0/orders (endpoint " in refusal(app)
