"""The code examples of the docs (docs/examples/), imported and run, so the docs cannot drift."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.testclient import TestClient

from fastapi_dapr import CloudEvent
from fastapi_dapr.testing import DaprTest, DaprTestClient, FakeClock

from .servers import serve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


def example(name: str) -> ModuleType:
    """docs/examples/<name>.py, imported afresh (its module-level state new)."""
    for module_name in [m for m in sys.modules if m.startswith("docs.examples.")]:
        del sys.modules[module_name]
    return importlib.import_module(f"docs.examples.{name}")


def cloudevent(data: Any, topic: str = "orders") -> bytes:
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "specversion": "1.0",
            "source": "checkout",
            "type": "com.dapr.event.sent",
            "datacontenttype": "application/json",
            "topic": topic,
            "pubsubname": "pubsub",
            "data": data,
        }
    ).encode()


def deliver(client: TestClient, path: str, data: Any) -> str:
    answer = client.post(
        path, content=cloudevent(data), headers={"content-type": "application/cloudevents+json"}
    )
    assert answer.status_code == 200
    status: str = answer.json()["status"]
    return status


# -- docs/migrating.md ---------------------------------------------------------------


def test_both_sides_of_the_migration_advertise_the_same_subscription() -> None:
    before, after = example("migrate_before"), example("migrate_after")
    with TestClient(before.app) as old, TestClient(after.app) as new:
        (old_sub,) = old.get("/dapr/subscribe").json()
        (new_sub,) = new.get("/dapr/subscribe").json()
    for field in ("pubsubname", "topic", "route", "deadLetterTopic"):
        assert old_sub[field] == new_sub[field]


def test_both_sides_of_the_migration_take_and_drop_the_same_orders() -> None:
    before, after = example("migrate_before"), example("migrate_after")
    with TestClient(before.app) as old, TestClient(after.app) as new:
        for client in (old, new):
            assert deliver(client, "/events/pubsub/orders", {"id": "o-1", "quantity": 2}) == "SUCCESS"
            assert deliver(client, "/events/pubsub/orders", {"id": "o-2", "quantity": 500}) == "DROP"
    assert before.orders == [{"id": "o-1", "quantity": 2}]
    assert [order.model_dump() for order in after.orders] == [{"id": "o-1", "quantity": 2}]


def test_the_pitfalls_the_migration_page_names() -> None:
    before, after = example("migrate_before"), example("migrate_after")
    assert before.on_order is None  # dapr-ext-fastapi's decorator returns None
    assert callable(after.on_order)
    with TestClient(before.app) as old, TestClient(after.app) as new:
        # Data that does not validate: a dict handler takes it; fastapi-dapr drops it.
        assert deliver(new, "/events/pubsub/orders", {"id": "o-3", "quantity": 0}) == "DROP"
        refused = new.post("/events/pubsub/orders", content=cloudevent({"id": "o-4", "quantity": 1}))
        assert refused.status_code == 200  # no APP_API_TOKEN set: deliveries are not checked
        assert old.get("/dapr/subscribe").status_code == 200


# -- the first service: docs/index.md and the README ------------------------------------


def test_the_quickstart_drops_large_orders_to_the_dead_letter_topic() -> None:
    quickstart = example("quickstart")
    with DaprTestClient(quickstart.app) as client:
        assert (
            client.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 2}).outcome == "delivered"
        )
        large = client.publish_and_wait("pubsub", "orders", {"id": "o-2", "quantity": 500})
    assert large.outcome == "dead-lettered"


def test_the_readme_shows_the_quickstart_example() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", readme, re.S)
    assert block is not None
    assert block.group(1) == (EXAMPLES / "quickstart.py").read_text()


# -- docs/subscriptions.md ------------------------------------------------------------


def test_the_subscription_examples() -> None:
    subscriptions = example("subscriptions")
    with DaprTestClient(subscriptions.app) as client:
        assert (
            client.publish_and_wait("pubsub", "orders", {"id": "o-1", "quantity": 2}).outcome == "delivered"
        )
        paid = client.publish_and_wait(
            "pubsub", "invoices", {"id": "i-1", "total": 9.5}, metadata={"cloudevent.type": "invoice.paid"}
        )
        unpaid = client.publish_and_wait("pubsub", "invoices", {"id": "i-2", "total": 1.0})
        raw = client.publish_and_wait("pubsub", "sensor", b"\x01\x02", metadata={"rawPayload": "true"})
        big = client.publish_and_wait("pubsub", "big-orders", {"id": "o-3", "quantity": 500})
        small = client.publish_and_wait("pubsub", "big-orders", {"id": "o-4", "quantity": 5})
    assert paid.path == "/billing/events/pubsub/invoices"
    assert unpaid.outcome == "unmatched"  # no rule matches, no default
    assert raw.outcome == "delivered"
    assert (big.outcome, small.outcome) == ("dropped", "delivered")
    order, invoice, data = subscriptions.seen
    assert (order.id, invoice.id, data) == ("o-1", "i-1", b"\x01\x02")


# -- docs/publishing.md ---------------------------------------------------------------


async def test_the_publishing_examples() -> None:
    subscriptions = example("subscriptions")
    publishing = example("publishing")
    app = subscriptions.app
    got: dict[str, list[Any]] = {"audit": [], "blobs": []}

    @subscriptions.dapr.subscribe("pubsub", "audit")
    async def on_audit(event: CloudEvent[str]) -> None:
        got["audit"].append(event.data)

    @subscriptions.dapr.subscribe("pubsub", "blobs", raw_payload=True)
    async def on_blob(data: bytes) -> None:
        got["blobs"].append(data)

    async with DaprTest(app) as test:
        await publishing.publish_examples(subscriptions.dapr)
        reports = [await test.wait_for_delivery(topic=t) for t in ("orders", "audit", "blobs", "orders")]
        assert await publishing.bulk_example(subscriptions.dapr) == []  # every entry published
    assert [r.outcome for r in reports] == ["delivered"] * 4
    assert got == {"audit": ["text is text/plain"], "blobs": [b"\x00\x01"]}
    assert [order.id for order in subscriptions.seen[:2]] == ["o-1", "o-2"]


# -- docs/invocation.md ---------------------------------------------------------------


async def test_the_invocation_examples() -> None:
    billing, files = FastAPI(), FastAPI()
    calls: list[tuple[str, str, str, bytes]] = []

    @billing.post("/invoices/{order_id}")
    async def invoice(order_id: str, request: Request) -> JSONResponse:
        calls.append((order_id, request.headers.get("x-tenant", ""), request.url.query, await request.body()))
        return JSONResponse({"invoice": order_id}, status_code=409 if order_id == "twice" else 201)

    @files.get("/big.bin")
    async def big() -> StreamingResponse:
        async def parts() -> Any:
            for _ in range(3):
                yield b"x" * 1000

        return StreamingResponse(parts(), media_type="application/octet-stream")

    invoking = example("invoking")
    async with serve(billing) as billing_url, serve(files) as files_url:
        settings = invoking.dapr.invocation
        invoking.dapr.invocation = dataclasses.replace(
            settings, apps={"billing": billing_url, "files": files_url}
        )
        async with DaprTest(invoking.app) as test:
            first = await test.client.post("/checkout/o-1")
            again = await test.client.post("/checkout/twice")
            status, body = await invoking.calls()
    assert first.json() == {"invoice": "o-1"}
    assert again.json() == {"order": "twice", "already": "invoiced"}
    assert calls[2] == ("7", "a", "expand=lines", b'{"total":12}')
    assert (status, body) == (200, b"x" * 3000)


# -- docs/sidecar.md, docs/resiliency.md, docs/testing.md ----------------------------------


def test_the_default_retry_example() -> None:
    retry_policy = example("retry_policy")
    app = retry_policy.app
    dapr = app.state.fastapi_dapr
    answers = {"busy": 503, "broken": 500}

    @dapr.subscribe("pubsub", "jobs")
    async def on_job(data: dict[str, str]) -> Any:
        return Response(status_code=answers[data["kind"]])

    with DaprTestClient(app, clock=FakeClock()) as client:
        busy = client.publish_and_wait("pubsub", "jobs", {"kind": "busy"})
        broken = client.publish_and_wait("pubsub", "jobs", {"kind": "broken"})
    assert len(busy.attempts) == 6  # 503 is in http_status_codes: five retries
    assert len(broken.attempts) == 1  # 500 is not


async def test_the_resiliency_testing_example_and_its_policy_file() -> None:
    await example("resiliency_testing").test_the_retry_schedule()


def test_the_testing_examples_pass() -> None:
    testing = example("testing_examples")
    testing.test_order_is_stored()
    testing.test_endpoint_publishes()
    testing.test_retries_on_a_fake_clock()


async def test_the_async_testing_example_passes() -> None:
    await example("testing_examples").test_order_is_stored_async()


def test_every_yaml_example_of_the_docs_is_a_resource_that_loads(tmp_path: Path) -> None:
    from fastapi_dapr.sidecar.resources import load_resources

    blocks = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        blocks += [b for b in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S) if "--8<--" not in b]
    assert blocks
    for index, block in enumerate(blocks):
        folder = tmp_path / str(index)
        folder.mkdir()
        (folder / "resource.yaml").write_text(block)
        load_resources([folder], app_id="checkout")  # raises ResourceError naming the problem


# -- every example of the docs is a file of docs/examples/ ------------------------------


def test_no_python_example_in_the_docs_is_written_inline() -> None:
    inline = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            lines = [line.strip() for line in block.strip().splitlines()]
            if not all(line.startswith("--8<--") for line in lines):
                inline.append(f"{page.name}: {lines[0] if lines else ''}")
    assert inline == [], "python examples must live in docs/examples/ and be included with --8<--"


SUPPORT = {"__init__.py", "orders_service.py"}  # not shown: what the shown examples use


@pytest.mark.parametrize(
    "path", sorted(p for p in EXAMPLES.glob("*.py") if p.name not in SUPPORT), ids=lambda p: p.name
)
def test_every_example_file_is_included_by_a_page(path: Path) -> None:
    pages = "".join(page.read_text() for page in (ROOT / "docs").glob("*.md"))
    assert f"docs/examples/{path.name}" in pages


def test_every_error_code_the_package_answers_is_in_the_error_table() -> None:
    source = "".join(path.read_text() for path in (ROOT / "fastapi_dapr").rglob("*.py"))
    codes = set(re.findall(r'"(ERR_[A-Z_]+)"', source))
    table = (ROOT / "docs" / "errors.md").read_text()
    documented = set(re.findall(r"^\| `(ERR_[A-Z_]+)` \|", table, re.M))
    assert codes - documented == set(), "error codes missing from docs/errors.md"
    assert documented - codes == set(), "docs/errors.md lists codes the package never answers"


def test_the_getting_started_test_passes() -> None:
    example("getting_started_test").test_large_orders_are_dead_lettered()


def test_every_option_is_on_the_configuration_page() -> None:
    import inspect

    from fastapi_dapr import Dapr, InvocationSettings, RetryPolicy

    page = (ROOT / "docs" / "configuration.md").read_text()
    names = [name for name in inspect.signature(Dapr).parameters if name != "app"]
    names += [field.name for field in dataclasses.fields(InvocationSettings)]
    names += [field.name for field in dataclasses.fields(RetryPolicy)]
    assert [name for name in names if f"| `{name}` |" not in page] == []


async def test_the_observability_examples() -> None:
    import logging

    observability = example("observability")
    async with DaprTest(observability.app) as test:
        scrape = await test.client.get("/metrics")
    assert scrape.status_code == 200
    assert "dapr_component_pubsub_egress_count" in scrape.text or scrape.text.startswith("#")
    logger = logging.getLogger("fastapi_dapr")
    before = list(logger.handlers)
    try:
        observability.use_json_logs()
        (added,) = [h for h in logger.handlers if h not in before]
        record = logging.LogRecord("fastapi_dapr", logging.WARNING, __file__, 1, "dropped", (), None)
        assert json.loads(added.format(record))["msg"] == "dropped"
    finally:
        logger.handlers[:] = before
