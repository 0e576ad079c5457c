"""The AsyncAPI 3.0 document of an app's events (docs/asyncapi.md): built from the handlers'
types and the declared publishers, served in both modes, and read by AsyncAPI's own JSON Schema
(@asyncapi/specs) and parser (@asyncapi/parser), npm-installed into a cache folder."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from fastapi_dapr import BulkEntry, CloudEvent, Dapr, DaprRouter, Publisher
from fastapi_dapr._asyncapi import asyncapi_schema
from fastapi_dapr.testing import DaprTest

from ..conftest import require_tool
from ..hostile import RawUpstream, answer_with

ROOT = Path(__file__).resolve().parents[2]
SPECS = "@asyncapi/specs@6.11.1"  # AsyncAPI's JSON Schemas, 3.0.0's among them
PARSER = "@asyncapi/parser@3.6.6"  # AsyncAPI's parser and validator, what its tools build on
EXAMPLE_YAML = ROOT / "docs" / "examples" / "asyncapi_example.yaml"


class Item(BaseModel):
    sku: str
    quantity: int = 1


class Order(BaseModel):
    """An order placed in the shop."""

    id: str
    items: list[Item]


class Cancellation(BaseModel):
    order_id: str


class Invoice(BaseModel):
    order_id: str
    total_cents: int


class Card(BaseModel):
    kind: Literal["card"]
    last4: str


class Transfer(BaseModel):
    kind: Literal["transfer"]
    iban: str


class Payment(BaseModel):
    method: Annotated[Card | Transfer, Field(discriminator="kind")]
    span: tuple[int, str]


def schemas(document: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = document["components"]["schemas"]
    return result


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def operation_messages(document: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The messages of an operation, through its channel's references to the components."""
    found = []
    for ref in document["operations"][key]["messages"]:
        found.append(resolve(document, resolve(document, ref["$ref"])["$ref"]))
    return found


def refs_in(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, sub in value.items():
            if key == "$ref":
                yield sub
            else:
                yield from refs_in(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from refs_in(sub)


def full_app(**settings: Any) -> tuple[FastAPI, Dapr]:
    """Every kind of subscription and publisher the document describes."""
    app = FastAPI(title="Shop", version="2.1.0", description="The shop's events.")
    dapr = Dapr(app, app_id="shop", **settings)

    @dapr.subscribe("pubsub", "orders", dead_letter_topic="orders-dead")
    async def take_order(order: Order) -> None:
        """Take an order.

        And invoice it."""

    @dapr.subscribe("pubsub", "orders", match='event.type == "cancelled"', priority=2)
    async def cancel(event: CloudEvent[Cancellation]) -> None: ...

    @dapr.subscribe("pubsub", "orders", match='event.type == "paid"', priority=1)
    async def paid(payment: Payment) -> None: ...

    @dapr.subscribe("pubsub", "anything")
    async def anything(event: CloudEvent) -> None: ...

    @dapr.subscribe("pubsub", "unannotated")
    async def unannotated(data) -> None: ...

    @dapr.subscribe("pubsub", "blobs", raw_payload=True)
    async def blob(data: bytes) -> None: ...

    @dapr.subscribe("events", "raw-orders", raw_payload=True)
    async def raw_order(order: Order) -> None: ...

    @dapr.subscribe("pubsub", "batches", bulk=True)
    async def batch(entries: list[BulkEntry[Order]]) -> None: ...

    router = DaprRouter(prefix="/v2")

    @router.subscribe("events", "orders.v2")
    async def take_order_v2(order: Order) -> None: ...

    app.include_router(router)
    dapr.publisher("pubsub", "invoices", Invoice, description="One per order taken.")
    dapr.publisher("pubsub", "audit", str)
    dapr.publisher("events", "totals", list[Invoice], raw_payload=True)
    return app, dapr


# -- what the document says -------------------------------------------------------------------------


def test_the_document_is_asyncapi_3_with_the_apps_title_version_and_id() -> None:
    _, dapr = full_app()
    document = dapr.asyncapi()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"] == {"title": "Shop", "version": "2.1.0", "description": "The shop's events."}
    assert document["defaultContentType"] == "application/cloudevents+json"
    assert document["x-dapr-app-id"] == "shop"
    # One server per pub/sub component, reached by its name.
    assert {key: (s["host"], s["protocol"]) for key, s in document["servers"].items()} == {
        "pubsub": ("pubsub", "dapr"),
        "events": ("events", "dapr"),
    }


def test_a_typed_handler_receives_a_cloudevent_whose_data_is_its_model() -> None:
    _, dapr = full_app()
    document = dapr.asyncapi()
    channel = document["channels"]["pubsub.orders"]
    assert channel["address"] == "orders"
    assert channel["servers"] == [{"$ref": "#/servers/pubsub"}]
    operation = document["operations"]["take_order"]
    assert operation["action"] == "receive"
    assert operation["channel"] == {"$ref": "#/channels/pubsub.orders"}
    assert operation["summary"] == "Take an order."
    assert operation["description"].startswith("And invoice it.\n\nReceives the messages of `orders`")
    assert operation["x-dapr-handler"].endswith("full_app.<locals>.take_order")
    assert operation["x-dapr-route"] == "/events/pubsub/orders"
    (message,) = operation_messages(document, "take_order")
    assert message["contentType"] == "application/cloudevents+json"
    envelope, data = message["payload"]["allOf"]
    assert envelope == {"$ref": "#/components/schemas/CloudEvent"}
    assert data["properties"]["data"] == {"$ref": "#/components/schemas/Order"}
    assert schemas(document)["CloudEvent"]["required"] == ["id", "source", "specversion", "type"]


def test_a_model_that_refers_to_another_has_both_in_the_components() -> None:
    _, dapr = full_app()
    document = dapr.asyncapi()
    order = schemas(document)["Order"]
    assert order["description"] == "An order placed in the shop."
    assert order["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Item"}
    assert schemas(document)["Item"]["required"] == ["sku"]
    assert "$defs" not in json.dumps(document)
    for ref in refs_in(document):  # every reference is local and points at something
        assert resolve(document, ref) is not None, ref


def test_an_untyped_handler_receives_any_cloudevent() -> None:
    _, dapr = full_app()
    document = dapr.asyncapi()
    for key in ("anything", "unannotated"):
        (message,) = operation_messages(document, key)
        assert message["name"] == "CloudEvent"
        assert message["payload"] == {"$ref": "#/components/schemas/CloudEvent"}


def test_raw_payload_messages_are_the_data_alone() -> None:
    _, dapr = full_app()
    document = dapr.asyncapi()
    (blob,) = operation_messages(document, "blob")
    assert (blob["contentType"], blob["payload"]) == (
        "application/octet-stream",
        {"type": "string", "format": "binary"},
    )
    (order,) = operation_messages(document, "raw_order")
    assert (order["name"], order["contentType"]) == ("Order.raw", "application/json")
    assert order["payload"] == {"$ref": "#/components/schemas/Order"}
    channel = document["channels"]["events.raw-orders"]
    assert channel["x-dapr-subscription"]["metadata"] == {"rawPayload": "true"}
    assert channel["servers"] == [{"$ref": "#/servers/events"}]
    assert "Raw payload" in document["operations"]["raw_order"]["description"]


def test_a_bulk_subscription_is_said_and_its_messages_are_single_cloudevents() -> None:
    _, dapr = full_app()
    document = dapr.asyncapi()
    (message,) = operation_messages(document, "batch")
    assert message["payload"]["allOf"][1]["properties"]["data"] == {"$ref": "#/components/schemas/Order"}
    assert document["channels"]["pubsub.batches"]["x-dapr-subscription"]["bulkSubscribe"] == {
        "enabled": True,
        "maxMessagesCount": 100,
        "maxAwaitDurationMs": 1000,
    }
    assert (
        "Delivered in bulk: up to 100 messages or 1000 ms" in document["operations"]["batch"]["description"]
    )


def test_routing_rules_are_in_their_operations_and_in_the_subscription_in_their_order() -> None:
    _, dapr = full_app()
    document = dapr.asyncapi()
    cancel, paid = document["operations"]["cancel"], document["operations"]["paid"]
    assert (cancel["x-dapr-match"], cancel["x-dapr-priority"]) == ('event.type == "cancelled"', 2)
    assert (paid["x-dapr-match"], paid["x-dapr-priority"]) == ('event.type == "paid"', 1)
    assert 'whose CloudEvent matches `event.type == "cancelled"` (priority 2)' in cancel["description"]
    assert "that no routing rule matches" in document["operations"]["take_order"]["description"]
    # daprd's subscription, as /dapr/subscribe advertises it: rules in evaluation order.
    routes = document["channels"]["pubsub.orders"]["x-dapr-subscription"]["routes"]
    assert [rule["match"] for rule in routes["rules"]] == [
        'event.type == "paid"',
        'event.type == "cancelled"',
    ]
    assert routes["default"] == "/events/pubsub/orders"
    # The topic carries each handler's message.
    assert set(document["channels"]["pubsub.orders"]["messages"]) == {"Order", "Cancellation", "Payment"}


def test_a_dead_letter_topic_is_a_channel_the_sidecar_sends_the_topics_messages_to() -> None:
    _, dapr = full_app()
    document = dapr.asyncapi()
    assert document["operations"]["take_order"]["x-dapr-dead-letter-topic"] == "orders-dead"
    assert document["channels"]["pubsub.orders"]["x-dapr-subscription"]["deadLetterTopic"] == "orders-dead"
    dead = document["channels"]["pubsub.orders-dead"]
    assert dead["address"] == "orders-dead"
    assert "x-dapr-subscription" not in dead  # nothing of the app subscribes to it
    operation = document["operations"]["pubsub.orders.deadLetter"]
    assert operation["action"] == "send"
    assert operation["channel"] == {"$ref": "#/channels/pubsub.orders-dead"}
    assert operation["x-dapr-dead-letter-of"] == "orders"
    names = [message["name"] for message in operation_messages(document, "pubsub.orders.deadLetter")]
    assert names == ["Order", "Cancellation", "Payment"]


def test_a_routers_prefix_is_in_the_route() -> None:
    _, dapr = full_app()
    operation = dapr.asyncapi()["operations"]["take_order_v2"]
    assert operation["x-dapr-route"] == "/v2/events/events/orders.v2"
    assert operation["channel"] == {"$ref": "#/channels/events.orders.v2"}


def test_declared_publishers_are_send_operations_with_their_types() -> None:
    _, dapr = full_app()
    document = dapr.asyncapi()
    invoices = document["operations"]["pubsub.invoices.publish"]
    assert (invoices["action"], invoices["description"]) == ("send", "One per order taken.")
    (message,) = operation_messages(document, "pubsub.invoices.publish")
    assert message["payload"]["allOf"][1]["properties"]["data"] == {"$ref": "#/components/schemas/Invoice"}
    (audit,) = operation_messages(document, "pubsub.audit.publish")
    assert audit["payload"]["allOf"][1]["properties"]["data"] == {"type": "string"}
    totals = document["operations"]["events.totals.publish"]
    assert totals["x-dapr-raw-payload"] is True
    (raw,) = operation_messages(document, "events.totals.publish")
    assert (raw["name"], raw["contentType"]) == ("list_Invoice.raw", "application/json")
    assert raw["payload"] == {"type": "array", "items": {"$ref": "#/components/schemas/Invoice"}}


def test_a_topic_subscribed_and_published_to_shares_its_channel_and_message() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "orders")
    async def take(order: Order) -> None: ...

    dapr.publisher("pubsub", "orders", Order)
    document = dapr.asyncapi()
    assert list(document["channels"]) == ["pubsub.orders"]
    assert list(document["components"]["messages"]) == ["Order"]
    assert [op["action"] for op in document["operations"].values()] == ["receive", "send"]


def test_names_that_collide_are_kept_apart() -> None:
    app = FastAPI()
    dapr = Dapr(app)

    class Order(BaseModel):  # another model of the module's name
        number: int

    def handler(model: type[BaseModel]) -> Callable[..., Any]:
        async def on_order(order: Any) -> None: ...

        on_order.__annotations__ = {"order": model, "return": None}
        return on_order

    dapr.subscribe("pubsub", "a.b")(handler(globals()["Order"]))
    dapr.subscribe("pubsub.a", "b")(handler(Order))  # the same channel key and handler name
    document = dapr.asyncapi()
    assert list(document["channels"]) == ["pubsub.a.b", "pubsub.a.b_2"]
    assert len(document["components"]["messages"]) == 2
    assert len([name for name in schemas(document) if "Order" in name]) == 2
    assert len(document["operations"]) == 2


def test_pydantic_schemas_become_asyncapi_schemas() -> None:
    converted = asyncapi_schema(Payment.model_json_schema(ref_template="#/components/schemas/{model}"))
    span = converted["properties"]["span"]
    assert span["items"] == [{"type": "integer"}, {"type": "string"}]  # draft-07's tuple form
    assert "prefixItems" not in span
    method = converted["properties"]["method"]
    assert method["discriminator"] == "kind"  # AsyncAPI's discriminator is the property's name
    # A keyword's name as a property's name is a property, left alone.
    assert asyncapi_schema({"properties": {"discriminator": {"type": "object"}}}) == {
        "properties": {"discriminator": {"type": "object"}}
    }
    assert asyncapi_schema(
        {"type": "array", "prefixItems": [{"type": "integer"}], "items": {"type": "string"}}
    ) == {"type": "array", "items": [{"type": "integer"}], "additionalItems": {"type": "string"}}


def test_a_type_pydantic_cannot_describe_does_not_break_the_document() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    dapr.publisher("pubsub", "orders", Order)
    dapr.publisher("pubsub", "callbacks", Callable[[], None])
    document = dapr.asyncapi()
    (message,) = operation_messages(document, "pubsub.callbacks.publish")
    data = message["payload"]["allOf"][1]["properties"]["data"]
    assert "no JSON Schema" in data["description"]
    assert "Order" in schemas(document)


# -- declaring publishers ----------------------------------------------------------------------------


def test_publisher_declarations_are_checked_and_the_same_one_twice_is_one() -> None:
    dapr = Dapr(FastAPI())
    first = dapr.publisher("pubsub", "invoices", Invoice)
    assert dapr.publisher("pubsub", "invoices", Invoice) is first
    assert isinstance(first, Publisher)
    assert (first.pubsub, first.topic, first.schema) == ("pubsub", "invoices", Invoice)
    with pytest.raises(ValueError, match="non-empty"):
        dapr.publisher("pubsub", "", Invoice)

    class NotAModel:
        pass

    with pytest.raises(TypeError, match="pydantic has no schema for"):
        dapr.publisher("pubsub", "x", NotAModel)
    assert len(dapr.asyncapi()["operations"]) == 1


async def test_a_publisher_publishes_to_its_topic() -> None:
    app = FastAPI()
    dapr = Dapr(app)
    invoices = dapr.publisher("pubsub", "invoices", Invoice)
    received: asyncio.Queue[Invoice] = asyncio.Queue()

    @dapr.subscribe("pubsub", "invoices")
    async def on_invoice(invoice: Invoice) -> None:
        await received.put(invoice)

    async with DaprTest(app):
        await invoices.publish(Invoice(order_id="o-1", total_cents=250))
        failed = await invoices.publish_bulk([Invoice(order_id="o-2", total_cents=1)])
        got = [await asyncio.wait_for(received.get(), 10) for _ in range(2)]
    assert failed == []
    assert sorted(invoice.order_id for invoice in got) == ["o-1", "o-2"]


async def test_a_raw_publisher_publishes_with_rawpayload_in_remote_mode() -> None:
    async with RawUpstream(answer_with(b"HTTP/1.1 204 No Content\r\n\r\n")) as daprd:
        dapr = Dapr(FastAPI(), mode="remote", dapr_http_endpoint=daprd.base_url)
        totals = dapr.publisher("events", "totals", list[Invoice], raw_payload=True)
        await totals.publish([Invoice(order_id="o-1", total_cents=3)], metadata={"ttlInSeconds": "9"})
        with pytest.raises(ValueError, match="contradicts"):
            await totals.publish([], metadata={"rawPayload": "false"})
        await dapr.backend.close()
    (request,) = daprd.requests
    path, _, query = request.target.partition("?")
    assert path == "/v1.0/publish/events/totals"
    assert sorted(query.split("&")) == ["metadata.rawPayload=true", "metadata.ttlInSeconds=9"]
    assert json.loads(request.body) == [{"order_id": "o-1", "total_cents": 3}]


# -- where it is served -------------------------------------------------------------------------------


def test_the_document_and_its_page_are_served_in_embedded_mode_outside_the_openapi_schema() -> None:
    app, dapr = full_app(app_api_token="secret")
    with TestClient(app) as client:
        answer = client.get("/asyncapi.json")
        page = client.get("/asyncapi")
        openapi = client.get("/openapi.json").json()
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == dapr.asyncapi()
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Shop <small>2.1.0</small></h1>" in page.text
    assert '<a href="/asyncapi.json">/asyncapi.json</a>' in page.text
    assert "<code>orders</code>" in page.text
    assert 'href="#schema-Order"' in page.text  # a reference links to the schema
    assert 'id="schema-Order"' in page.text
    assert set(openapi["paths"]) & {"/asyncapi.json", "/asyncapi"} == set()


def test_the_document_is_served_in_remote_mode_the_same() -> None:
    app, dapr = full_app(mode="remote", dapr_http_endpoint="http://127.0.0.1:9")
    _, embedded = full_app()
    with TestClient(app) as client:
        document = client.get("/asyncapi.json").json()
        assert client.get("/asyncapi").status_code == 200
    assert document == dapr.asyncapi()
    assert document == embedded.asyncapi()


def test_the_paths_can_be_moved_or_left_unserved() -> None:
    app = example("asyncapi_settings").app  # docs/asyncapi.md's
    with TestClient(app) as client:
        assert client.get("/events/asyncapi.json").json()["asyncapi"] == "3.0.0"
        assert client.get("/asyncapi.json").status_code == 404
        assert client.get("/asyncapi").status_code == 404
    app = FastAPI()
    Dapr(app, asyncapi_url=None)
    with TestClient(app, root_path="/shop") as client:
        page = client.get("/asyncapi")
        assert client.get("/asyncapi.json").status_code == 404
    assert page.status_code == 200
    assert "AsyncAPI 3.0.0 document" not in page.text  # no link to a document not served


def test_the_page_links_to_the_document_under_the_root_path() -> None:
    app = FastAPI()
    Dapr(app)
    with TestClient(app, root_path="/shop") as client:
        page = client.get("/asyncapi").text
    assert '<a href="/shop/asyncapi.json">' in page


@pytest.mark.parametrize("url", ["asyncapi.json", "/v1.0/asyncapi.json", "/v1.0-alpha1/x", "/dapr/asyncapi"])
def test_paths_of_daprs_own_api_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"asyncapi|Dapr's own API"):
        Dapr(FastAPI(), asyncapi_url=url)
    with pytest.raises(ValueError, match=r"asyncapi|Dapr's own API"):
        Dapr(FastAPI(), asyncapi_docs_url=url)


def test_the_page_escapes_what_it_shows() -> None:
    app = FastAPI(title="<script>alert(1)</script>")
    dapr = Dapr(app)

    @dapr.subscribe("pubsub", "<b>orders</b>")
    async def take(order: Order) -> None:
        """Takes <i>orders</i>."""

    with TestClient(app) as client:
        page = client.get("/asyncapi").text
    for tag in ("<script>", "<b>", "<i>"):
        assert tag not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;orders&lt;/b&gt;" in page


# -- the docs' example -------------------------------------------------------------------------------


def example(name: str) -> Any:
    """docs/examples/<name>.py, imported afresh."""
    sys.modules.pop(f"docs.examples.{name}", None)
    return importlib.import_module(f"docs.examples.{name}")


def example_document() -> dict[str, Any]:
    document: dict[str, Any] = example("asyncapi_example").dapr.asyncapi()
    return document


def as_yaml(document: dict[str, Any]) -> str:
    """How the docs show a document: YAML, long strings folded (at 72, so that no line,
    its last word past the width included, scrolls in the page's code block)."""
    return yaml.safe_dump(document, sort_keys=False, width=72, allow_unicode=True)


def test_the_document_the_docs_show_is_what_the_example_generates() -> None:
    document = example_document()
    assert yaml.safe_load(EXAMPLE_YAML.read_text()) == document
    assert EXAMPLE_YAML.read_text() == as_yaml(document), (
        "regenerate it: python -c 'import yaml; from docs.examples.asyncapi_example import dapr; "
        'print(yaml.safe_dump(dapr.asyncapi(), sort_keys=False, width=72, allow_unicode=True), end="")\' '
        "> docs/examples/asyncapi_example.yaml"
    )


def test_the_docs_page_shows_the_example_and_its_document() -> None:
    page = (ROOT / "docs" / "asyncapi.md").read_text()
    assert '--8<-- "docs/examples/asyncapi_example.py"' in page
    assert '--8<-- "docs/examples/asyncapi_example.yaml"' in page


# -- AsyncAPI's own JSON Schema and parser ------------------------------------------------------------


@pytest.fixture(scope="session")
def asyncapi_modules() -> Path:
    """@asyncapi/specs and @asyncapi/parser installed with npm into a cache folder (once)."""
    node, npm = require_tool("node"), require_tool("npm")
    cache = Path(os.environ.get("FASTAPI_DAPR_NODE_CACHE", Path.home() / ".cache" / "fastapi-dapr-tests"))
    folder = cache / f"{PARSER}+{SPECS}".replace("/", "+")
    modules = folder / "node_modules"
    if not (modules / "@asyncapi" / "parser" / "package.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        command = [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            subprocess.run([*command, PARSER, SPECS], check=True, capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = (getattr(exc, "stderr", None) or b"").decode(errors="replace")
            if os.environ.get("CI") == "true":
                pytest.fail(f"npm install {PARSER} {SPECS} failed: {exc}\n{output}")
            pytest.skip(f"npm install {PARSER} {SPECS} failed (no registry?): {output.strip()[-300:]}")
    assert Path(node).exists()
    return modules


def schema_errors(document: Any, modules: Path) -> list[str]:
    """What AsyncAPI 3.0.0's JSON Schema finds wrong with `document`, checked offline."""
    import jsonschema
    from referencing import Registry

    schema = json.loads((modules / "@asyncapi" / "specs" / "schemas" / "3.0.0.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema"  # the draft it is written in

    def retrieve(uri: str) -> Any:  # every $ref resolves inside the file: nothing is fetched
        raise AssertionError(f"the schema refers to {uri}, outside itself")

    validator = jsonschema.Draft7Validator(schema, registry=Registry(retrieve=retrieve))
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def parse(document: Any, modules: Path) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(ROOT / "tests" / "js" / "asyncapi_parse.js")],
        input=json.dumps(document).encode(),
        capture_output=True,
        timeout=60,
        env={**os.environ, "NODE_PATH": str(modules)},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.node
@pytest.mark.process
@pytest.mark.timeout(720)  # the first one npm-installs the packages (up to 600 s)
def test_the_documents_are_valid_for_asyncapi_3s_json_schema(asyncapi_modules: Path) -> None:
    empty = Dapr(FastAPI()).asyncapi()
    for document in (full_app()[1].asyncapi(), example_document(), empty):
        assert schema_errors(document, asyncapi_modules) == []


@pytest.mark.node
@pytest.mark.process
@pytest.mark.timeout(720)
def test_the_json_schema_finds_what_asyncapi_does_not_allow(asyncapi_modules: Path) -> None:
    document = full_app()[1].asyncapi()
    # pydantic's own discriminator (OpenAPI's object) is not AsyncAPI's (a property name).
    schemas(document)["Payment"]["properties"]["method"]["discriminator"] = {"propertyName": "kind"}
    document["operations"]["take_order"]["action"] = "consume"
    del document["servers"]["pubsub"]["protocol"]
    errors = schema_errors(document, asyncapi_modules)
    assert any(e.startswith("/components/schemas/Payment") for e in errors), errors
    assert any(e.startswith("/operations/take_order") for e in errors), errors
    assert any(e.startswith("/servers/pubsub") for e in errors), errors


@pytest.mark.node
@pytest.mark.process
@pytest.mark.timeout(720)
def test_asyncapis_parser_reads_the_document_without_an_error_or_a_warning(asyncapi_modules: Path) -> None:
    document = full_app()[1].asyncapi()
    result = parse(document, asyncapi_modules)
    # Severity 0 is an error, 1 a warning; the one note is that AsyncAPI 3.1 exists.
    serious = [d for d in result["diagnostics"] if d["severity"] <= 1]
    assert serious == []
    assert {d["code"] for d in result["diagnostics"]} <= {"asyncapi-latest-version"}
    read = result["read"]
    assert ["pubsub.orders", "orders"] in read["channels"]
    assert ["pubsub.orders-dead", "orders-dead"] in read["channels"]
    operations = {key: (action, channels, messages) for key, action, channels, messages in read["operations"]}
    assert operations["take_order"] == ("receive", ["pubsub.orders"], ["Order"])
    assert operations["pubsub.orders.deadLetter"] == (
        "send",
        ["pubsub.orders-dead"],
        ["Order", "Cancellation", "Payment"],
    )
    assert operations["events.totals.publish"] == ("send", ["events.totals"], ["list_Invoice.raw"])
    assert sorted(read["servers"]) == [["events", "dapr", "events"], ["pubsub", "dapr", "pubsub"]]
    # And the docs' example.
    example = parse(example_document(), asyncapi_modules)
    assert [d for d in example["diagnostics"] if d["severity"] <= 1] == []


@pytest.mark.node
@pytest.mark.process
@pytest.mark.timeout(720)
def test_asyncapis_parser_finds_a_broken_reference(asyncapi_modules: Path) -> None:
    document = full_app()[1].asyncapi()
    document["operations"]["take_order"]["messages"] = [{"$ref": "#/channels/pubsub.orders/messages/Nope"}]
    result = parse(document, asyncapi_modules)
    assert any(d["severity"] == 0 for d in result["diagnostics"]), result["diagnostics"]
