"""The code examples of the docs (docs/examples/), imported and run, so the docs cannot drift."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import importlib
import json
import re
import shutil
import ssl
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.testclient import TestClient

from fastapi_dapr import CloudEvent, Dapr, DaprAPIError, ResourceError
from fastapi_dapr.testing import DaprTest, DaprTestClient, FakeClock

from .certs import CertificateAuthority
from .docs_pages import (
    DOCS,
    assert_prints,
    code_blocks,
    commands,
    free_port,
    includes,
    moved,
    run_curl,
    run_httpx,
    sections,
)
from .processes import ChildProcess, communicate
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
    assert invoking.dapr.resources_paths == ["resources"]  # the reader's folder: here, the examples'
    invoking.dapr.resources_paths = [EXAMPLES / "resources"]
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
        blocks += [b for _, b in code_blocks(page.read_text(), "yaml") if "--8<--" not in b]
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
        for _, block in code_blocks(page.read_text(), "python"):  # with a title or not
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


# -- docs/getting-started.md: the tutorial, step by step --------------------------------------

TUTORIAL = "getting-started.md"
PAGE_URLS = ("http://127.0.0.1:8000", "http://127.0.0.1:8010", "http://127.0.0.1:8011")


def tutorial_steps() -> dict[str, str]:
    """The page's steps, by number."""
    steps = sections(TUTORIAL, "Step ")
    return {heading.split(":")[0].split()[1]: body for heading, body in steps.items()}


def tutorial_main(step: str) -> str:
    """The main.py a step runs: the last one the page showed, at that step or before."""
    shown = ""
    for number, body in tutorial_steps().items():
        mains = [f for f in includes(body) if re.fullmatch(r"docs/examples/tutorial_\d\.py", f)]
        shown = (mains or [shown])[-1]
        if number == step:
            return Path(shown).stem
    raise AssertionError(f"no step {step}")


# After each curl command of a step, the topics whose next delivery the test waits for before
# it runs the next one: what a reader, slower than a delivery, never has to wait for.
WAITS: dict[str, list[list[str]]] = {
    "1": [[]],
    "2": [["orders"], []],
    "3": [["orders"], [], ["orders"], []],
    "4": [[], [], ["orders", "payments"], [], ["orders", "orders-dead"], []],
    "5": [["orders"], []],
    "6": [[], [], ["orders"], []],
}
RUNNERS = [pytest.param(run_httpx, id="httpx"), pytest.param(run_curl, id="curl", marks=pytest.mark.process)]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("step", sorted(WAITS))
async def test_each_tutorial_step_prints_what_the_page_shows(step: str, runner: Any) -> None:
    body = tutorial_steps()[step]
    curls = [command for command in commands(body) if command.text.startswith("curl ")]
    assert len(curls) == len(WAITS[step]), "a command was added to the step: say what it waits for"
    main = example(tutorial_main(step))
    async with contextlib.AsyncExitStack() as stack:
        urls: dict[str, str] = {}
        if "docs/examples/tutorial_stock.py" in includes(body):
            stock = importlib.import_module("docs.examples.tutorial_stock")
            urls[PAGE_URLS[1]] = await stack.enter_async_context(serve(stock.app))
            apps = {"stock": urls[PAGE_URLS[1]]}
            main.dapr.invocation = dataclasses.replace(main.dapr.invocation, apps=apps)
        test = await stack.enter_async_context(DaprTest(main.app))
        urls[PAGE_URLS[0]] = await stack.enter_async_context(serve(main.app))
        for command, topics in zip(curls, WAITS[step], strict=True):
            printed = await runner(command.text, urls)
            for topic in topics:
                await test.wait_for_delivery(topic=topic)
            assert_prints(command, printed)


def test_the_tutorials_highlighted_lines_are_the_lines_each_step_changed() -> None:
    before: list[str] = []
    for fence, block in code_blocks((DOCS / TUTORIAL).read_text(), "python"):
        if 'title="main.py"' not in fence:
            continue
        (name,) = includes(block)
        lines = (ROOT / name).read_text().splitlines()
        changed: set[int] = set()
        matcher = difflib.SequenceMatcher(None, before, lines, autojunk=False)
        for tag, _, _, first, last in matcher.get_opcodes():
            if tag in ("replace", "insert"):
                changed |= {n + 1 for n in range(first, last) if lines[n].strip()}
        highlighted: set[int] = set()
        for part in re.findall(r'hl_lines="([^"]*)"', fence)[0].split() if before else []:
            low, _, high = part.partition("-")
            highlighted |= set(range(int(low), int(high or low) + 1))
        assert highlighted == (changed if before else set()), name
        before = lines


@pytest.mark.process
async def test_the_first_steps_under_uvicorn_as_the_page_runs_them(tmp_path: Path) -> None:
    """`uvicorn main:app` in a folder of its own, then steps 1 and 2's curl commands, by curl."""
    shutil.copy(EXAMPLES / "tutorial_1.py", tmp_path / "main.py")
    steps = tutorial_steps()
    assert "uvicorn main:app" in [command.text for command in commands(steps["1"])]
    port = free_port()
    uvicorn_ = ChildProcess(
        [str(Path(sys.executable).parent / "uvicorn"), "main:app", "--port", str(port)],
        ready=b"Uvicorn running on",
        cwd=tmp_path,
    )
    await uvicorn_.start()
    try:
        assert f"Uvicorn running on http://127.0.0.1:{port}" in uvicorn_.text
        (started,) = [line for line in uvicorn_.text.splitlines() if "embedded mode" in line]
        assert "'orders'" in started  # the app id
        assert "pubsub/orders" in started  # the subscription
        urls = {PAGE_URLS[0]: f"http://127.0.0.1:{port}"}
        curls = [c for step in ("1", "2") for c in commands(steps[step]) if c.text.startswith("curl ")]
        for command in curls:
            # The delivery is done in the server's loop before curl has started again.
            assert_prints(command, await run_curl(command.text, urls))
        await uvicorn_.printed(b'"GET /received HTTP/1.1" 200')
    finally:
        await uvicorn_.stop()
    access_log = [line for line in uvicorn_.text.splitlines() if ' HTTP/1.1" ' in line]
    assert any('"POST /v1.0/publish/pubsub/orders HTTP/1.1" 204' in line for line in access_log)
    assert [line for line in access_log if "/events/" in line] == []  # deliveries are in process


def test_the_tutorials_tests_pass() -> None:
    """Step 7's test_main.py, against step 6's main.py imported as `main`."""
    assert tutorial_main("7") == "tutorial_6"
    main = example("tutorial_6")
    sys.modules["main"] = main
    try:
        tests = importlib.import_module("docs.examples.tutorial_test")
        names = [name for name in dir(tests) if name.startswith("test_")]
        assert len(names) == 3
        for name in names:
            getattr(tests, name)()
    finally:
        del sys.modules["main"]


@pytest.mark.process
async def test_the_tutorials_tests_pass_under_pytest_as_the_page_runs_them(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "tutorial_6.py", tmp_path / "main.py")
    shutil.copy(EXAMPLES / "tutorial_test.py", tmp_path / "test_main.py")
    assert "python -m pytest test_main.py" in [c.text for c in commands(tutorial_steps()["7"])]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_main.py",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await communicate(process, 120)
    assert process.returncode == 0, out.decode()
    assert "3 passed" in out.decode()  # what the page says pytest reports


@pytest.mark.redis
@pytest.mark.process  # curl
async def test_the_tutorials_replicas_share_the_orders_on_redis(tmp_path: Path) -> None:
    """Step 8: two replicas on one Redis, ten orders published to the first, each handled once."""
    from .redis_server import redis_server

    body = tutorial_steps()["8"]
    loop, *reads = [c for c in commands(body) if c.text.startswith(("for ", "curl "))]
    assert [c.text for c in reads] == [f"curl {PAGE_URLS[0]}/orders", f"curl {PAGE_URLS[2]}/orders"]
    (resource,) = [f for f in includes(body) if f.endswith(".yaml")]
    async with redis_server(tmp_path) as server, contextlib.AsyncExitStack() as stack:
        folder = tmp_path / "resources"
        folder.mkdir()
        text = (ROOT / resource).read_text()
        (folder / "pubsub.yaml").write_text(text.replace("localhost:6379", server.url))
        handled: list[str] = []
        all_handled = asyncio.Event()

        def count(report: Any) -> None:
            handled.append(report.outcome)
            if len(handled) == 10:
                all_handled.set()

        urls: dict[str, str] = {}
        for page_url in (PAGE_URLS[0], PAGE_URLS[2]):
            replica = example("tutorial_8")
            replica.dapr.resources_paths = [folder]
            test = await stack.enter_async_context(DaprTest(replica.app))
            test.dapr.backend.add_observer(count)
            urls[page_url] = await stack.enter_async_context(serve(replica.app))
        process = await asyncio.create_subprocess_exec("bash", "-c", moved(loop.text, urls))
        await communicate(process, 60)
        assert process.returncode == 0
        await asyncio.wait_for(all_handled.wait(), 30)
        lists = [json.loads(await run_httpx(command.text, urls)) for command in reads]
    assert handled == ["delivered"] * 10
    first, second = lists
    assert sorted(first + second) == sorted(f"r-{i}" for i in range(1, 11))  # the ten, each once


def test_every_command_of_the_tutorial_is_run_by_a_test_or_named_here() -> None:
    """A command added to the page is run by a test above, or named as walked by hand here."""
    by_hand = {  # the network, daprd or a second terminal's Redis: walked in a fresh venv
        "mkdir orders-service && cd orders-service",
        "git clone https://github.com/fastapi-dapr/fastapi-dapr",
        "python3 -m venv .venv && . .venv/bin/activate",
        "pip install -e './fastapi-dapr[server]'",
        "pip install -e './fastapi-dapr[testing]'",
        "pip install -e './fastapi-dapr[redis]'",
        "redis-server --port 6379",
        "uvicorn stock:app --port 8010",
        "uvicorn main:app --port 8000",
        "uvicorn main:app --port 8011",
        "cd fastapi-dapr",
        "uvicorn example_app.main:app",
    }
    run = {"uvicorn main:app", "python -m pytest test_main.py"}
    page = [c.text for c in commands((DOCS / TUTORIAL).read_text())]
    assert {c for c in page if not c.startswith(("curl ", "for "))} == by_hand | run


# -- docs/invocation.md: an HTTPEndpoint of each kind, loaded and called ---------------------

ENDPOINTS = EXAMPLES / "resources" / "endpoints"


def endpoint_folder(tmp_path: Path, kind: str, server_url: str) -> Path:
    """docs/examples/resources/endpoints/<kind>, copied, its baseUrl's origin the test server's."""
    folder = tmp_path / kind
    shutil.copytree(ENDPOINTS / kind, folder)
    for path in folder.glob("*.yaml"):
        text = path.read_text()
        (base_url,) = re.findall(r"baseUrl: (\S+)", text)
        served = urlsplit(server_url)
        moved_url = urlsplit(base_url)._replace(scheme=served.scheme, netloc=served.netloc).geturl()
        text = text.replace(f"baseUrl: {base_url}", f"baseUrl: {moved_url}")
        path.write_text(text.replace("value: secrets.json", f"value: {folder / 'secrets.json'}"))
    return folder


def echo() -> FastAPI:
    upstream = FastAPI()

    @upstream.api_route("/{path:path}", methods=["GET", "POST"])
    async def answer(request: Request) -> dict[str, Any]:
        return {"path": request.url.path, "query": request.url.query, "headers": dict(request.headers)}

    return upstream


@contextlib.asynccontextmanager
async def calling(folder: Path) -> AsyncIterator[Dapr]:
    app = FastAPI()
    Dapr(app, app_id="checkout", resources_path=folder)
    async with DaprTest(app) as test:
        yield test.dapr


async def test_a_base_urls_endpoint_gets_the_method_and_the_query(tmp_path: Path) -> None:
    async with serve(echo()) as url, calling(endpoint_folder(tmp_path, "plain", url)) as dapr:
        answer = await dapr.invoke("billing", "invoices/7", params={"full": "1"})
    assert answer.json()["path"] == "/api/invoices/7"  # as the page says
    assert answer.json()["query"] == "full=1"


async def test_an_endpoints_headers_from_a_value_the_environment_and_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve(echo()) as url:
        folder = endpoint_folder(tmp_path, "headers", url)
        async with calling(folder) as dapr:
            without_tenant = (await dapr.invoke("carrier", "quotes")).json()["headers"]
        monkeypatch.setenv("CARRIER_TENANT", "acme")
        async with calling(folder) as dapr:
            answer = await dapr.invoke("carrier", "quotes", headers={"Accept-Language": "fr"})
    headers = answer.json()["headers"]
    secrets = json.loads((ENDPOINTS / "headers" / "secrets.json").read_text())
    assert headers["accept-language"] == "en-GB"  # the resource's, in place of the caller's
    assert headers["x-tenant"] == "acme"
    assert headers["authorization"] == secrets["carrier-token"]
    assert "x-tenant" not in without_tenant  # an empty value is not sent


def certificates(tmp_path: Path) -> tuple[CertificateAuthority, dict[str, Path]]:
    ca = CertificateAuthority()
    server = ca.issue("localhost", server=True)
    files = {"ca": ca.pem, "cert": server.certificate, "key": server.private_key}
    paths = {name: tmp_path / f"{name}.pem" for name in files}
    for name, pem in files.items():
        paths[name].write_text(pem)
    return ca, paths


async def test_an_endpoint_with_a_private_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, files = certificates(tmp_path)
    tls = {"ssl_certfile": str(files["cert"]), "ssl_keyfile": str(files["key"])}
    async with serve(echo(), **tls) as url:
        folder = endpoint_folder(tmp_path, "tls", url)
        async with calling(folder) as dapr:  # LEDGER_CA not set: the system's trust store
            with pytest.raises(DaprAPIError, match="certificate"):
                await dapr.invoke("ledger", "entries")
        monkeypatch.setenv("LEDGER_CA", ca.pem)  # export LEDGER_CA="$(cat ledger-ca.pem)"
        async with calling(folder) as dapr:
            answer = await dapr.invoke("ledger", "entries")
    assert answer.status_code == 200


async def test_an_endpoint_with_mutual_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, files = certificates(tmp_path)
    client = ca.issue("checkout", server=False)
    tls = {
        "ssl_certfile": str(files["cert"]),
        "ssl_keyfile": str(files["key"]),
        "ssl_ca_certs": str(files["ca"]),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,  # the server asks for a certificate of that CA
    }
    monkeypatch.setenv("PAYMENTS_CA", ca.pem)
    async with serve(echo(), **tls) as url:
        folder = endpoint_folder(tmp_path, "mtls", url)
        with pytest.raises(ResourceError, match=r"HTTPEndpoint 'payments': spec\.clientTLS: "):
            async with calling(folder):  # the variables not exported: no key pair, the start stops
                pass
        without = tmp_path / "without-client-certificate"
        shutil.copytree(folder, without)
        resource = without / "payments.yaml"
        client_items = ("certificate:", "privateKey:")
        kept = [line for line in resource.read_text().splitlines() if "PAYMENTS_CLIENT" not in line]
        resource.write_text("\n".join(line for line in kept if line.strip() not in client_items))
        async with calling(without) as dapr:  # no client certificate: the server refuses
            with pytest.raises(DaprAPIError, match="failed to invoke"):
                await dapr.invoke("payments", "charges")
        monkeypatch.setenv("PAYMENTS_CLIENT_CERT", client.certificate)
        monkeypatch.setenv("PAYMENTS_CLIENT_KEY", client.private_key)
        async with calling(folder) as dapr:
            answer = await dapr.invoke("payments", "charges", http_method="POST", json={"amount": 1})
    assert answer.status_code == 200


async def test_an_event_stream_endpoint_passes_each_event_on_as_it_comes(tmp_path: Path) -> None:
    upstream = FastAPI()
    second = asyncio.Event()
    accepted: list[str] = []

    @upstream.get("/v1/stream")
    async def stream(request: Request) -> StreamingResponse:
        accepted.append(request.headers["accept"])

        async def events() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await second.wait()  # sent only once the first one has reached the caller
            yield b"data: 2\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async with serve(upstream) as url, calling(endpoint_folder(tmp_path, "sse", url)) as dapr:
        async with await dapr.invoke("prices", "stream", stream=True) as answer:
            chunks = answer.aiter_bytes()
            first = await asyncio.wait_for(anext(chunks), 10)
            second.set()
            rest = b"".join([chunk async for chunk in chunks])
        invoking = example("invoking")  # the page's own loop, on the same endpoint
        invoking.dapr.resources_paths = [tmp_path / "sse"]
        second.set()
        async with DaprTest(invoking.app):
            events = await invoking.prices()
    assert (first, rest) == (b"data: 1\n\n", b"data: 2\n\n")
    assert accepted == ["text/event-stream", "text/event-stream"]  # the resource's header
    assert b"".join(events) == b"data: 1\n\ndata: 2\n\n"


# -- the other resources the pages include ---------------------------------------------------


@pytest.mark.parametrize(
    "folder",
    sorted({p.parent for p in (EXAMPLES / "resources").rglob("*.yaml")}),
    ids=lambda p: str(p.relative_to(EXAMPLES / "resources")) or ".",
)
def test_every_resource_file_of_the_docs_loads(folder: Path) -> None:
    from fastapi_dapr.sidecar.resources import load_resources

    resources = load_resources([folder], app_id="checkout")  # a ResourceError names the problem
    assert resources.components or resources.http_endpoints or resources.resiliencies


def publish_statuses(app_id: str) -> dict[str, int]:
    app = FastAPI()
    Dapr(app, app_id=app_id, resources_path=EXAMPLES / "resources" / "scopes")
    topics = ("orders", "invoices", "refunds", "dead", "other")
    with DaprTestClient(app) as client:
        return {topic: client.post(f"/v1.0/publish/pubsub/{topic}", json={}).status_code for topic in topics}


def test_the_topic_scopes_of_the_security_page() -> None:
    """What the page says each app may publish (403 ERR_PUBSUB_FORBIDDEN otherwise)."""
    allowed = {"orders": 204, "invoices": 204, "refunds": 204, "dead": 204, "other": 403}
    assert publish_statuses("checkout") == {**dict.fromkeys(allowed, 403), "orders": 204}
    assert publish_statuses("billing") == {**dict.fromkeys(allowed, 403), "invoices": 204, "refunds": 204}
    assert publish_statuses("shipping") == {**allowed, "refunds": 403}  # not listed: all but the protected


@pytest.mark.redis
async def test_the_redis_pages_component_and_its_secret_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .redis_server import RedisServer

    server = RedisServer(tmp_path)
    server.argv += ["--requirepass", "s3cret"]
    folder = tmp_path / "resources"
    shutil.copytree(EXAMPLES / "resources" / "redis", folder)
    component = folder / "pubsub.yaml"
    component.write_text(component.read_text().replace("localhost:6379", server.url))
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", resources_path=folder)

    @dapr.subscribe("pubsub", "orders")
    async def on_order(data: dict[str, str]) -> None:
        pass

    await server.start()
    try:
        async with DaprTest(app) as test:
            report = await test.publish_and_wait("pubsub", "orders", {"id": "o-1"})
    finally:
        await server.stop()
    assert report.outcome == "delivered"


# -- docs/sidecar.md --------------------------------------------------------------------------


def test_a_route_the_api_would_shadow_stops_the_start() -> None:
    """The page: the app refuses to start, naming the route, its endpoint and the API path."""
    from fastapi_dapr import DaprError

    app = FastAPI()
    Dapr(app)

    @app.get("/v1.0/report")
    async def report() -> dict[str, str]:
        return {}

    with pytest.raises(DaprError) as info, DaprTestClient(app):
        pass
    assert "GET /v1.0/report" in str(info.value)
    assert "report" in str(info.value)
    assert "/v1.0/" in str(info.value)
