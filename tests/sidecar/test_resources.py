"""Dapr's YAML resources: what is read, and the one clear error for what cannot be (reference 7)."""

from __future__ import annotations

import logging
import time
import tracemalloc
from pathlib import Path

import pytest
from fastapi import FastAPI

from fastapi_dapr import Dapr, ResourceError
from fastapi_dapr.sidecar.resources import load_resources
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


def refusal(folder: Path, text: str) -> tuple[Path, str]:
    """The file written with `text`, and the message of the ResourceError that loading it raises."""
    path = write(folder, "broken.yaml", text)
    with pytest.raises(ResourceError) as info:
        load_resources([folder], app_id="app")
    return path, str(info.value)


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


@pytest.mark.parametrize(("written", "read"), [("", ""), ("v2", "v2"), (None, "v1"), ("absent", "v1")])
def test_a_component_version_is_read_as_written_and_v1_when_absent(
    tmp_path: Path, written: str | None, read: str
) -> None:
    text = COMPONENT.format(name="events", type="pubsub.in-memory", metadata="[]")
    if written == "absent":
        text = text.replace("  version: v1\n", "")
    else:
        text = text.replace(
            "version: v1", f"version: {written!r}" if written is not None else "version: null"
        )
    write(tmp_path, "c.yaml", text)
    [component] = load_resources([tmp_path], app_id="app").components
    assert component.version == read


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
            "must be a string, not an integer",
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
    path, message = refusal(tmp_path, text)
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
    # An absolute path: no working directory to name.
    with pytest.raises(ResourceError, match=r"nope: the resources path does not exist$"):
        load_resources([tmp_path / "nope"], app_id="app")


def test_unknown_component_type_stops_the_start(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", COMPONENT.format(name="k", type="pubsub.pulsar", metadata="[]"))
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
        COMPONENT.format(name="k", type="pubsub.pulsar", metadata="[]") + "  ignoreErrors: true\n",
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
        (route,) = client.dapr.backend.running().routes
    assert route.raw_payload is raw


# -- what a small file can cost: size, nesting and aliases (issue 14, item 1) -----------------


def billion_laughs(use: str) -> str:
    """Nine levels of nine aliases (9**9 strings once expanded) in about 650 bytes, then `use` (*i)."""
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "laughs:\n" + "".join(f"  {level}\n" for level in levels) + use


@pytest.mark.parametrize(
    "use",
    [
        # a Component's metadata value, which daprd's DynamicValue turns into JSON text
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: bomb}\n"
        "spec: {type: pubsub.in-memory, metadata: [{name: laughs, value: *i}]}\n",
        # a name, which an error message would show
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: *i}\n"
        "spec: {type: pubsub.in-memory}\n",
        # a Subscription's metadata
        "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\n"
        "spec: {pubsubname: pubsub, topic: t, route: /t, metadata: {laughs: *i}}\n",
    ],
)
def test_an_alias_bomb_is_refused_at_once(tmp_path: Path, use: str) -> None:
    path = write(tmp_path, "bomb.yaml", billion_laughs(use))
    assert path.stat().st_size < 800
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ResourceError) as info:
            load_resources([tmp_path], app_id="app")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 2
    assert peak < 5_000_000
    assert str(info.value).startswith(f"{path}: document 1: its aliases expand it to ")
    assert "Go's YAML rule" in str(info.value)


def test_aliases_within_go_rule_are_read(tmp_path: Path) -> None:
    write(
        tmp_path,
        "c.yaml",
        "common: &common [{name: maxQueueLength, value: 7}]\n"
        + COMPONENT.format(name="a", type="pubsub.in-memory", metadata="*common")
        + "---\n"
        + "common: &common [{name: maxQueueLength, value: 7}]\n"
        + COMPONENT.format(name="b", type="pubsub.in-memory", metadata="*common"),
    )
    resources = load_resources([tmp_path], app_id="app")
    assert [c.values() for c in resources.components] == [{"maxQueueLength": "7"}] * 2


def test_an_alias_inside_its_own_node_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        COMPONENT.format(name="p", type="pubsub.in-memory", metadata="[{name: x, value: &loop [*loop]}]"),
    )
    with pytest.raises(ResourceError, match=rf"^{path}: document 1, line 9: the alias \*loop is inside"):
        load_resources([tmp_path], app_id="app")


@pytest.mark.parametrize(
    "deep",
    [
        "[" * 5000 + "]" * 5000,  # libyaml's scanner stops at 1,000 flow levels
        "{a: " * 150 + "1" + "}" * 150,
        "\n" + "".join("    " + "  " * level + "- \n" for level in range(150)),
    ],
)
def test_deep_nesting_is_refused(tmp_path: Path, deep: str) -> None:
    path = write(tmp_path, "c.yaml", COMPONENT.format(name="p", type="pubsub.in-memory", metadata="[]"))
    path.write_text(path.read_text() + f"  extra: {deep}\n")
    with pytest.raises(
        ResourceError, match=rf"(?s)^{path}: .*(nested more than 100 levels|maximum nesting depth)"
    ):
        load_resources([tmp_path], app_id="app")


def test_moderate_nesting_is_read(tmp_path: Path) -> None:
    nested = "[" * 90 + "1" + "]" * 90
    write(
        tmp_path, "c.yaml", COMPONENT.format(name="p", type="x", metadata=f"[{{name: n, value: {nested}}}]")
    )
    assert load_resources([tmp_path], app_id="app").components[0].values() == {"n": nested}


def test_a_file_over_a_mebibyte_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", COMPONENT.format(name="p", type="pubsub.in-memory", metadata="[]"))
    with path.open("a") as file:
        file.write("# padding\n" * 110_000)
    with pytest.raises(ResourceError, match=rf"^{path}: the file is over 1048576 bytes \(1 MiB\)"):
        load_resources([tmp_path], app_id="app")


def test_a_file_of_too_many_nodes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "fastapi_dapr.sidecar.yaml_loader.MAX_NODES", 50
    )  # 100,000 takes a second or two to reach
    items = ", ".join(f"{{name: m{index}, value: v}}" for index in range(20))
    path = write(
        tmp_path, "c.yaml", COMPONENT.format(name="p", type="pubsub.in-memory", metadata=f"[{items}]")
    )
    with pytest.raises(ResourceError, match=rf"^{path}: document 1, line 9: the file has more than 50 nodes"):
        load_resources([tmp_path], app_id="app")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("2024-01-31", "2024-01-31"),  # a date stays text, as in Go's yaml.v3 (PyYAML: a datetime.date)
        ("!!timestamp 2024-01-31 10:00:00", "2024-01-31 10:00:00"),
        ("!!set {a, b}", '{"a":null,"b":null}'),
        ("!!binary aGVsbG8=", "hello"),
        ("[2024-01-31, {at: 2024-01-31}]", '["2024-01-31",{"at":"2024-01-31"}]'),
    ],
)
def test_yaml_scalars_that_are_not_json_are_read_as_text(tmp_path: Path, value: str, text: str) -> None:
    write(tmp_path, "c.yaml", COMPONENT.format(name="p", type="x", metadata=f"[{{name: v, value: {value}}}]"))
    assert load_resources([tmp_path], app_id="app").components[0].values() == {"v": text}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0x" + "f" * 40, "does not fit in 64 bits"),
        ("9" * 5000, "tag:yaml.org,2002:int"),
        ("!!int 09", "tag:yaml.org,2002:int"),
        ("!!bool maybe", "tag:yaml.org,2002:bool"),
        ("!!float soon", "tag:yaml.org,2002:float"),
    ],
)
def test_yaml_scalars_that_cannot_be_read(tmp_path: Path, value: str, problem: str) -> None:
    path = write(
        tmp_path, "c.yaml", COMPONENT.format(name="p", type="x", metadata=f"[{{name: v, value: {value}}}]")
    )
    with pytest.raises(ResourceError, match=f"^{path}: is not valid YAML: ") as info:
        load_resources([tmp_path], app_id="app")
    assert problem in str(info.value)


# -- documents of a kind or version that is not read (issue 14, item 10) --------------------


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Componnet",
            "kind: 'Componnet' is not a kind of Dapr resource read here; did you mean 'Component'?",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: component",
            "kind: 'component' is not a kind of Dapr resource read here; did you mean 'Component'?",
        ),
        (
            "apiVersion: dapr.io/v1aplha1\nkind: Component",
            "apiVersion: 'dapr.io/v1aplha1' is not a version of Component read here; "
            "did you mean 'dapr.io/v1alpha1'?",
        ),
        (
            "apiVersion: Dapr.io/v1alpha1\nkind: Component",
            "apiVersion: 'Dapr.io/v1alpha1' is not a version of Component read here; "
            "did you mean 'dapr.io/v1alpha1'?",
        ),
        (
            "apiVersion: dapr.io/v1alpha1",
            "kind: is required (Component, Configuration, HTTPEndpoint, MCPServer, Resiliency, "
            "Subscription, WorkflowAccessPolicy)",
        ),
    ],
)
def test_a_dapr_document_of_unknown_kind_or_version_stops_the_start(
    tmp_path: Path, header: str, problem: str
) -> None:
    path = write(tmp_path, "pubsub.yaml", COMPONENT.format(name="a", type="pubsub.in-memory", metadata="[]"))
    with path.open("a") as file:
        file.write(f"---\n{header}\nmetadata: {{name: orders}}\nspec: {{type: pubsub.redis, metadata: []}}\n")
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with pytest.raises(ResourceError) as info, DaprTestClient(app):
        pass
    assert str(info.value) == f"{path}: document 2 ('orders'): {problem}"


def test_a_subscription_version_typo_names_the_nearest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "s.yaml",
        "apiVersion: dapr.io/v2alpah1\nkind: Subscription\nmetadata: {name: s}\n"
        "spec: {pubsubname: p, topic: t}\n",
    )
    with pytest.raises(ResourceError) as info:
        load_resources([tmp_path], app_id="app")
    assert str(info.value) == (
        f"{path}: document 1 ('s'): apiVersion: 'dapr.io/v2alpah1' is not a version of Subscription "
        "read here; did you mean 'dapr.io/v2alpha1'?"
    )


def test_other_api_groups_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path,
        "mixed.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n"
        "kind: Component\nmetadata: {name: forgot}\nspec: {type: pubsub.redis}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n---\n"
        + COMPONENT.format(name="events", type="pubsub.in-memory", metadata="[]"),
    )
    write(tmp_path, "other.yaml", "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\n")
    with caplog.at_level(logging.INFO, logger="fastapi_dapr"):
        resources = load_resources([tmp_path], app_id="app")
    assert [c.name for c in resources.components] == ["events"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{path}: not Dapr resources, skipped: document 1 ('apps/v1' 'Deployment'); "
        "document 2 (None 'Component': a Dapr Component has apiVersion dapr.io/v1alpha1); "
        "document 3 ('v1' 'ConfigMap')"
    ]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("other.yaml: document 1: a Configuration is read from --config" in line for line in infos)


# -- fields of the wrong type, and values that can never work (issue 14, item 12) -----------


@pytest.mark.parametrize(
    ("text", "start", "problem"),
    [
        (
            "apiVersion: dapr.io/v1alpha1\nkind: [Component]\nmetadata: {name: p}\n",
            "document 1 ('p'): kind: ",
            "must be a string, not a list",
        ),
        (
            "apiVersion: {group: dapr.io}\nkind: Component\nmetadata: {name: p}\n",
            "document 1 ('p'): apiVersion: ",
            "must be a string, not a mapping",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: [p]}\nspec: {type: x}\n",
            "Component in document 1: metadata.name: ",
            "must be a string, not a list",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: [p]\nspec: {type: x}\n",
            "Component in document 1: metadata: ",
            "must be a mapping, not a list",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: p, namespace: [a]}\n"
            "spec: {type: x}\n",
            "Component 'p': metadata.namespace: ",
            "must be a string, not a list",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: p}\n"
            "spec: {type: x, version: true}\n",
            "Component 'p': spec.version: ",
            "must be a string or an integer, not a boolean",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: p}\nspec: {type: [x]}\n",
            "Component 'p': spec.type: ",
            "must be a string, not a list",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: p}\n"
            "spec: {type: x}\nscopes: app\n",
            "Component 'p': scopes: ",
            "must be a list, not a string",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\n"
            "spec: {pubsubname: p, topic: t, metadata: {rawPayload: {enabled: true}}}\n",
            "Subscription 's': spec.metadata.rawPayload: ",
            "must be a string, not a mapping",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: s}\n"
            "spec: {pubsubname: p, topic: t, deadLetterTopic: [dead]}\n",
            "Subscription 's': spec.deadLetterTopic: ",
            "must be a string, not a list",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\n"
            "spec: {policies: {timeouts: {~: 5s}}}\n",
            "Resiliency 'r': spec.policies.timeouts: ",
            "a key must be a name, not null",
        ),
        (
            "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\n"
            "spec: {policies: {retries: {r: {matching: {httpStatusCodes: '\u0665\u0660\u0660'}}}}}\n",
            "Resiliency 'r': spec.policies.retries.r.matching.httpStatusCodes: ",
            "is not a code or a range of codes",
        ),
    ],
)
def test_a_field_of_the_wrong_type_names_file_kind_resource_and_field(
    tmp_path: Path, text: str, start: str, problem: str
) -> None:
    path, message = refusal(tmp_path, text)
    assert message.startswith(f"{path}: {start}")
    assert problem in message


def test_numbers_and_booleans_as_names_are_their_text(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\n"
        "spec:\n  policies: {timeouts: {1234: 5s}}\n  targets: {apps: {1234: {timeout: '1234'}}}\n",
    )
    (resiliency,) = load_resources([tmp_path], app_id="app").resiliencies
    assert resiliency.timeouts == {"1234": 5.0}
    assert list(resiliency.apps) == ["1234"]


@pytest.mark.parametrize(
    ("base_url", "problem"),
    [
        ("'http://[::1'", "'http://[::1' is not a URL: Invalid IPv6 URL"),
        ("'http://api:99999'", "'http://api:99999' is not a URL: Port out of range 0-65535"),
        ("'http://api:https/'", "'http://api:https/' is not a URL: Port could not be cast"),
        ("'http://api:0/'", "'http://api:0/': port 0 cannot be called"),
        ("'http://a pi/'", "'http://a pi/' has a space or a control character"),
        ('"http://api\\r\\nx: y/"', repr("http://api\r\nx: y/") + " has a space or a control character"),
    ],
)
def test_a_base_url_that_cannot_be_called_is_refused(tmp_path: Path, base_url: str, problem: str) -> None:
    path, message = refusal(
        tmp_path,
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: e}\n"
        f"spec: {{baseUrl: {base_url}}}\n",
    )
    assert message.startswith(f"{path}: HTTPEndpoint 'e': spec.baseUrl: {problem}")


def test_a_long_value_is_cut_short_in_the_message(tmp_path: Path) -> None:
    write(
        tmp_path,
        "c.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: p}\n"
        f"spec: {{type: x, initTimeout: '{'9' * 100_000}x'}}\n",
    )
    with pytest.raises(ResourceError, match="is not a duration") as info:
        load_resources([tmp_path], app_id="app")
    assert len(str(info.value)) < 300


# -- the models behind the loader (issue 15) --------------------------------------------------


def test_only_the_camel_case_names_are_fields(tmp_path: Path) -> None:
    # The models also take Python names (populate_by_name), but a file has daprd's names only.
    write(tmp_path, "c.yaml", COMPONENT.format(name="p", type="x", metadata="[]") + "  ignore_errors: true\n")
    assert load_resources([tmp_path], app_id="app").components[0].ignore_errors is False
    write(tmp_path, "c.yaml", COMPONENT.format(name="p", type="x", metadata="[]") + "  ignoreErrors: true\n")
    assert load_resources([tmp_path], app_id="app").components[0].ignore_errors is True


@pytest.mark.parametrize(
    ("spec", "field", "problem"),
    [
        (
            "spec: {pubsubname: p, topic: t, bulkSubscribe: {enabled: false, maxMessagesCount: many}}",
            "spec.bulkSubscribe.maxMessagesCount",
            "must be an integer, not a string",
        ),
        (
            "spec: {pubsubname: p, topic: t, metadata: {a: [1]}}",
            "spec.metadata.a",
            "must be a string, not a list",
        ),
        ("spec: {pubsubname: [p], topic: t}", "spec.pubsubname", "must be a string, not a list"),
        ("spec: [p]", "spec", "must be a mapping, not a list"),
    ],
)
def test_every_field_is_checked_even_when_unused(tmp_path: Path, spec: str, field: str, problem: str) -> None:
    path, message = refusal(
        tmp_path, f"apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {{name: s}}\n{spec}\n"
    )
    assert message == f"{path}: Subscription 's': {field}: {problem}"


def test_a_resources_path_that_does_not_exist_says_so_and_from_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ResourceError) as missing:
        load_resources(["./resources"], app_id="app")
    assert (
        str(missing.value)
        == f"resources: the resources path does not exist, from the working directory {tmp_path}"
    )
    (tmp_path / "file.yaml").write_text("")
    with pytest.raises(ResourceError) as not_a_folder:
        load_resources([tmp_path / "file.yaml"], app_id="app")
    assert str(not_a_folder.value) == f"{tmp_path / 'file.yaml'}: the resources path is not a folder"
