"""Dapr's YAML resources: what is read, and the one clear error for what cannot be (reference 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from fastapi_dapr import Dapr, ResourceError
from fastapi_dapr._resources import load_resources
from fastapi_dapr.testing import DaprTestClient

COMPONENT = """
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: {type}
  version: v1
  metadata: {metadata}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_several_documents_per_file_and_folders(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    write(
        one,
        "a.yaml",
        COMPONENT.format(name="fast", type="pubsub.in-memory", metadata="[]")
        + "---\n"
        + COMPONENT.format(
            name="slow", type="pubsub.in-memory", metadata="[{name: maxQueueLength, value: 5}]"
        ),
    )
    write(
        two,
        "b.yml",
        "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\n"
        "spec: {pubsubname: fast, topic: t, route: /t}\n",
    )
    write(two, "notes.txt", "not a resource")
    write(two, "other.yaml", "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\n")
    resources = load_resources([one, two], app_id="app")
    assert [c.name for c in resources.components] == ["fast", "slow"]
    assert resources.components[1].values() == {"maxQueueLength": "5"}  # JSON text of the number
    assert [s.name for s in resources.subscriptions] == ["s"]
    assert resources.subscriptions[0].default == "/t"


def test_components_of_the_folder_are_started(tmp_path: Path) -> None:
    write(tmp_path, "c.yaml", COMPONENT.format(name="events", type="pubsub.in-memory", metadata="[]"))
    app = FastAPI()
    Dapr(app, resources_path=str(tmp_path))
    with DaprTestClient(app) as client:
        names = [c["name"] for c in client.get("/v1.0/metadata").json()["components"]]
        assert names == ["events"]  # no built-in `pubsub` once the folder declares one
        assert client.post("/v1.0/publish/pubsub/t", json={}).status_code == 404


def test_no_resources_gives_the_default_pubsub() -> None:
    app = FastAPI()
    Dapr(app)
    with DaprTestClient(app) as client:
        assert client.get("/v1.0/metadata").json()["components"][0]["name"] == "pubsub"


def test_scopes_and_namespaces(tmp_path: Path) -> None:
    write(
        tmp_path,
        "c.yaml",
        COMPONENT.format(name="mine", type="pubsub.in-memory", metadata="[]")
        + "scopes: [app]\n---\n"
        + COMPONENT.format(name="theirs", type="pubsub.in-memory", metadata="[]")
        + "scopes: [other]\n---\n"
        + COMPONENT.format(name="ns", type="pubsub.in-memory", metadata="[]").replace(
            "name: ns", "name: ns\n  namespace: prod"
        ),
    )
    assert [c.name for c in load_resources([tmp_path], app_id="app").components] == ["mine", "ns"]
    assert [c.name for c in load_resources([tmp_path], app_id="app", namespace="dev").components] == ["mine"]


def test_env_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_LENGTH", "42")
    write(
        tmp_path,
        "c.yaml",
        COMPONENT.format(
            name="p", type="pubsub.in-memory", metadata="[{name: maxQueueLength, envRef: QUEUE_LENGTH}]"
        ),
    )
    assert load_resources([tmp_path], app_id="a").components[0].values() == {"maxQueueLength": "42"}


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (
            COMPONENT.format(name="p", type="pubsub.in-memory", metadata="[{value: 1}]"),
            "spec.metadata[0].name",
            "is required",
        ),
        (
            COMPONENT.format(name="p", type="pubsub.in-memory", metadata="{a: 1}"),
            "spec.metadata",
            "must be a list",
        ),
        (
            COMPONENT.format(
                name="p", type="pubsub.in-memory", metadata="[{name: a, value: 1}, {name: a, value: 2}]"
            ),
            "spec.metadata[1].name",
            "'a' is given twice",
        ),
        (
            COMPONENT.format(
                name="p", type="pubsub.in-memory", metadata="[{name: a, envRef: DAPR_API_TOKEN}]"
            ),
            "spec.metadata[0].envRef",
            "not allowed",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: p}\nspec: {version: v1}\n",
            "spec.type",
            "is required",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: p}\nspec: {type: 5}\n",
            "spec.type",
            "must be a string, not int",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: p}\n"
            "spec: {type: pubsub.in-memory, initTimeout: soon}\n",
            "spec.initTimeout",
            "is not a duration",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: a/b}\nspec: {type: x}\n",
            "metadata.name",
            "without '/'",
        ),
        (
            "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: s}\n"
            "spec: {pubsubname: p, topic: t, routes: {rules: [{match: 'event.type ==', path: /x}]}}\n",
            "spec.routes.rules[0].match",
            "not a valid CEL expression",
        ),
        (
            "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: s}\n"
            "spec: {pubsubname: p, topic: t, routes: {rules: [{match: 'true'}]}}\n",
            "spec.routes.rules[0].path",
            "is required",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\nspec: {pubsubname: p}\n",
            "spec.topic",
            "is required",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\n"
            "spec: {pubsubname: p, topic: t, bulkSubscribe: {enabled: yes, maxMessagesCount: many}}\n",
            "spec.bulkSubscribe.maxMessagesCount",
            "must be an integer",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\n"
            "spec: {pubsubname: p, topic: t}\nscopes: [1]\n",
            "scopes[0]",
            "must be an app id",
        ),
    ],
)
def test_broken_resource_names_file_kind_name_and_field(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write(tmp_path, "broken.yaml", text)
    with pytest.raises(ResourceError) as info:
        load_resources([tmp_path], app_id="app")
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert f": {field}: " in message
    assert problem in message
    assert "'p'" in message or "'s'" in message or "'a/b'" in message


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "kind: Component\n  - : : :\n")
    with pytest.raises(ResourceError, match=f"^{path}: is not valid YAML"):
        load_resources([tmp_path], app_id="app")


def test_duplicate_names_within_a_kind(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", COMPONENT.format(name="p", type="pubsub.in-memory", metadata="[]"))
    second = write(tmp_path, "b.yaml", COMPONENT.format(name="p", type="pubsub.in-memory", metadata="[]"))
    with pytest.raises(ResourceError, match=f"^{second}: Component 'p': metadata.name: .*also in .*a.yaml"):
        load_resources([tmp_path], app_id="app")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ResourceError, match="not a folder"):
        load_resources([tmp_path / "nope"], app_id="app")


def test_unknown_component_type_stops_the_start(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", COMPONENT.format(name="k", type="pubsub.kafka", metadata="[]"))
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with (
        pytest.raises(ResourceError, match=f"^{path}: Component 'k': spec: unsupported pub/sub type"),
        DaprTestClient(app),
    ):
        pass


def test_bad_component_metadata_stops_the_start(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        COMPONENT.format(name="m", type="pubsub.in-memory", metadata="[{name: maxQueueLength, value: lots}]"),
    )
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with (
        pytest.raises(ResourceError, match=f"^{path}: Component 'm': spec: maxQueueLength must be"),
        DaprTestClient(app),
    ):
        pass


def test_ignore_errors_skips_the_component(tmp_path: Path) -> None:
    write(
        tmp_path,
        "c.yaml",
        COMPONENT.format(name="k", type="pubsub.kafka", metadata="[]") + "  ignoreErrors: true\n",
    )
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with DaprTestClient(app) as client:
        assert client.get("/v1.0/metadata").json().get("components") == []
        assert client.post("/v1.0/publish/k/t", json={}).json()["errorCode"] == "ERR_PUBSUB_NOT_CONFIGURED"


def test_components_started_before_a_failure_are_closed(tmp_path: Path) -> None:
    from fastapi_dapr.brokers.memory import MemoryBroker

    closed: list[str] = []
    original = MemoryBroker.close

    async def close(self: MemoryBroker) -> None:
        closed.append(self.name)
        await original(self)

    write(tmp_path, "a.yaml", COMPONENT.format(name="good", type="pubsub.in-memory", metadata="[]"))
    write(
        tmp_path,
        "b.yaml",
        COMPONENT.format(name="bad", type="pubsub.in-memory", metadata="[{name: maxQueueLength, value: 0}]"),
    )
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MemoryBroker, "close", close)
        with pytest.raises(ResourceError, match="Component 'bad'"), DaprTestClient(app):
            pass
    assert closed == ["good"]


@pytest.mark.parametrize(("value", "raw"), [("true", True), ("1", True), ("T", True), ("yes", False)])
def test_declarative_raw_payload_reads_go_booleans(tmp_path: Path, value: str, raw: bool) -> None:
    write(
        tmp_path,
        "s.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\n"
        f"spec: {{pubsubname: pubsub, topic: t, route: /t, metadata: {{rawPayload: '{value}'}}}}\n",
    )
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with DaprTestClient(app) as client:
        (route,) = client.dapr._running().routes
    assert route.raw_payload is raw
