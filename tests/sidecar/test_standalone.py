"""The standalone sidecar (`python -m fastapi_dapr sidecar`) in a process of its own, in front
of apps in other processes that use no fastapi-dapr code: a plain FastAPI app written as
Dapr's docs show, the official SDKs' servers, and the official SDKs' clients against it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import require_tool
from ..processes import ChildProcess, communicate

ROOT = Path(__file__).resolve().parents[2]
JS = Path(__file__).resolve().parents[1] / "js"
DAPR_JS_SDK = "@dapr/dapr@3.18.0"

pytestmark = pytest.mark.process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(**values: str | None) -> dict[str, str]:
    """This process's environment without Dapr's variables, plus `values` (None: left out)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DAPR_API_TOKEN", "APP_API_TOKEN", "DAPR_HTTP_PORT", "DAPR_HTTP_ENDPOINT", "APP_ID")
    }
    env.update({key: value for key, value in values.items() if value is not None})
    return env


class App(ChildProcess):
    """A test app (`tests/apps/<module>.py`) under uvicorn on a free loopback port."""

    def __init__(self, module: str = "plain_app", **env: str | None) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "uvicorn", f"tests.apps.{module}:app"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"]
        super().__init__(argv, ready=b"Uvicorn running on", env=environment(**env), cwd=ROOT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def received(self, count: int, kind: str = "") -> list[dict[str, Any]]:
        """What the app recorded, once it has `count` records of `kind` (it waits up to 10 s)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=15) as client:
            answer = await client.get("/received", params={"count": count, "kind": kind})
        records: list[dict[str, Any]] = answer.json()["received"]
        return records

    async def subscribe_headers(self) -> list[dict[str, str]]:
        async with httpx.AsyncClient(base_url=self.url) as client:
            headers: list[dict[str, str]] = (await client.get("/received")).json()["subscribe_headers"]
        return headers


class RawApp(ChildProcess):
    """`tests/apps/raw_app.py`, on the loopback port it picked itself (read from its output)."""

    def __init__(self, **env: str | None) -> None:
        argv = [sys.executable, "-m", "tests.apps.raw_app"]
        super().__init__(argv, ready=b"raw app listening on ", env=environment(**env), cwd=ROOT)
        self.port = 0

    async def start(self) -> int:
        pid = await super().start()
        self.port = int(self.output[-1].rsplit(b":", 1)[1])
        return pid


class Sidecar(ChildProcess):
    """`python -m fastapi_dapr sidecar` on a free loopback port."""

    def __init__(
        self,
        app_id: str,
        app_port: int | None,
        *extra: str,
        ready: bytes = b": ready: ",
        port: int | None = None,
        **env: str | None,
    ) -> None:
        self.app_id = app_id
        self.port = port or 0  # 0: the sidecar picks a free one, read from its log when it is ready
        self.picks_port = not port
        argv = [sys.executable, "-m", "fastapi_dapr", "sidecar", "--app-id", app_id]
        if "--dapr-grpc-port" not in extra:
            argv += ["--dapr-grpc-port", "0"]  # not daprd's 50001: tests run side by side
        argv += ["--dapr-http-port", str(self.port), *extra]
        if app_port is not None:
            argv += ["--app-port", str(app_port)]
        super().__init__(argv, ready=ready, env=environment(**env), cwd=ROOT)

    async def start(self) -> int:
        pid = await super().start()
        if self.picks_port:
            # Printed before the ready line, as text or inside a JSON log line.
            found = (re.search(rb"Dapr API listening on http://[^\s\"]+:(\d+)", line) for line in self.output)
            match = next(m for m in found if m is not None)
            self.port = int(match.group(1))
        return pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"dapr-api-token": token} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=15)


@contextlib.asynccontextmanager
async def running(*processes: ChildProcess) -> AsyncIterator[None]:
    """Start each in turn (once the one before is ready); stop them all by their PID at the end."""
    try:
        for process in processes:
            await process.start()
        yield
    finally:
        for process in reversed(processes):
            await process.stop()


def resources(folder: Path) -> Path:
    """A declarative Subscription beside the app's own: one for a topic the app does not
    advertise, one for a topic it does (the app's own replaces it, as in daprd)."""
    folder.mkdir()
    (folder / "subscriptions.yaml").write_text(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: audits}\n"
        "spec: {pubsubname: pubsub, topic: audits, routes: {default: /orders}}\n"
        "---\n"
        "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata: {name: orders}\n"
        "spec: {pubsubname: pubsub, topic: orders, route: /nowhere}\n"
    )
    return folder


async def test_a_plain_fastapi_app_gets_deliveries_and_invocations(tmp_path: Path) -> None:
    app = App(APP_API_TOKEN="app-secret")
    sidecar = Sidecar(
        "plain",
        app.port,
        "--resources-path",
        str(resources(tmp_path / "resources")),
        APP_API_TOKEN="app-secret",
        DAPR_API_TOKEN="api-secret",
    )
    async with running(app, sidecar), sidecar.client("api-secret") as client:
        # The sidecar read GET /dapr/subscribe as daprd does: with its id and the app's token.
        (asked,) = await app.subscribe_headers()
        assert asked["dapr-app-id"] == "plain"
        assert asked["dapr-api-token"] == "app-secret"
        listed = {
            (s["topic"], s["type"]): s for s in (await client.get("/v1.0/metadata")).json()["subscriptions"]
        }
        assert set(listed) == {
            ("orders", "PROGRAMMATIC"),
            ("flaky", "PROGRAMMATIC"),
            ("poison", "PROGRAMMATIC"),
            ("poison-dead", "PROGRAMMATIC"),
            ("widgets", "PROGRAMMATIC"),
            ("slow", "PROGRAMMATIC"),
            ("audits", "DECLARATIVE"),
        }
        assert listed[("poison", "PROGRAMMATIC")]["deadLetterTopic"] == "poison-dead"

        for topic, data in [
            ("orders", {"n": 1}),
            ("flaky", {"n": 2}),
            ("poison", {"n": 3}),
            ("widgets", {"size": "big"}),
            ("widgets", {"size": "small"}),
            ("audits", {"n": 4}),
        ]:
            answer = await client.post(f"/v1.0/publish/pubsub/{topic}", json=data)
            assert answer.status_code == 204, answer.text

        orders = await app.received(2, "orders")
        by_topic = {record["body"]["topic"]: record for record in orders}
        assert by_topic["orders"]["body"]["data"] == {"n": 1}
        assert by_topic["orders"]["body"]["source"] == "plain"
        assert by_topic["orders"]["headers"]["content-type"] == "application/cloudevents+json"
        assert by_topic["orders"]["headers"]["dapr-api-token"] == "app-secret"
        assert by_topic["orders"]["headers"]["pubsubname"] == "pubsub"
        assert by_topic["audits"]["body"]["data"] == {"n": 4}  # the declarative subscription
        (flaky,) = await app.received(1, "flaky")
        assert flaky["body"]["attempt"] == 2  # RETRY, then delivered again
        (dropped,) = await app.received(1, "poison")
        (dead,) = await app.received(1, "dead-letters")
        assert dead["body"]["id"] == dropped["body"]["id"]  # DROP: to the dead-letter topic
        assert dead["body"]["data"] == {"n": 3}
        (big,) = await app.received(1, "widgets-big")
        (other,) = await app.received(1, "widgets-other")
        assert (big["body"]["data"], other["body"]["data"]) == ({"size": "big"}, {"size": "small"})

        # Invocation of the sidecar's own app id goes to the app, with the app's token.
        answer = await client.post("/v1.0/invoke/plain/method/hello/ada?x=1", json={"q": 1})
        assert answer.status_code == 200
        assert answer.json() == {
            "hello": "ada",
            "app": "",
            "query": "x=1",
            "body": {"q": 1},
            "caller": "plain",
            "callee": "plain",
            "token": "app-secret",
        }
        answer = await client.get("/hello/grace", headers={"dapr-app-id": "plain"})
        assert answer.json()["hello"] == "grace"
        answer = await client.get("/v1.0/invoke/plain.default/method/hello/ns")  # its own namespace
        assert answer.json()["hello"] == "ns"
        assert (await client.get("/v1.0/invoke/plain/method/missing")).status_code == 404  # the app's own 404

        # The API is the embedded sidecar's: without DAPR_API_TOKEN nothing but health.
        async with sidecar.client() as anonymous:
            assert (await anonymous.get("/v1.0/healthz")).status_code == 204
            refused = await anonymous.post("/v1.0/publish/pubsub/orders", json={})
            assert (refused.status_code, refused.text) == (401, "invalid api token\n")
            assert (await anonymous.get("/v1.0/invoke/plain/method/hello/x")).status_code == 401
    assert sidecar.text.count("sent to dead-letter topic poison-dead") == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_it_gracefully_and_in_flight_work_finishes(sig: signal.Signals) -> None:
    app = App()
    sidecar = Sidecar("plain", app.port, "--dapr-graceful-shutdown-seconds", "5")
    async with running(app, sidecar), sidecar.client() as client:
        assert (await client.post("/v1.0/publish/pubsub/slow", json={"seconds": 2})).status_code == 204
        call = asyncio.ensure_future(client.get("/v1.0/invoke/plain/method/slow"))
        await app.received(1, "slow-POST-start")  # a delivery in flight
        await app.received(1, "slow-GET-start")  # and an invocation
        sidecar.send_signal(sig)
        await sidecar.printed(f"{sig.name} received: stopping".encode())
        answer = await call  # the call in flight got its answer
        assert (answer.status_code, answer.json()) == (200, {"status": "SUCCESS"})
        assert await sidecar.wait() == 0
        # The delivery takes the app 2 s: the sidecar waited for it before it exited.
        assert len(await app.received(0, "slow-POST-done")) == 1
        with pytest.raises(httpx.ConnectError):
            await client.get("/v1.0/healthz")
    assert "app id plain: stopped" in sidecar.text
    assert "Traceback" not in sidecar.text


async def test_the_app_gets_its_token_only_not_the_callers_as_well() -> None:
    # No DAPR_API_TOKEN: the API is open, and a caller may send a dapr-api-token of its own.
    app = App(APP_API_TOKEN="app-secret")
    sidecar = Sidecar("plain", app.port, APP_API_TOKEN="app-secret")
    async with running(app, sidecar), sidecar.client("the-callers") as client:
        answer = await client.post("/v1.0/invoke/plain/method/hello/t", headers={"expect": "100-continue"})
        assert answer.status_code == 200, answer.text
        (call,) = await app.received(1, "hello")
    tokens = [value for name, value in call["header_list"] if name == "dapr-api-token"]
    assert tokens == ["app-secret"]  # daprd sets it: replaced, not added to
    assert "expect" not in call["headers"]


async def test_a_message_published_before_the_app_listens_is_delivered_once_it_does() -> None:
    app = App()
    sidecar = Sidecar("plain", app.port, ready=b"Dapr API listening on")  # it waits for the app
    async with running(sidecar), sidecar.client() as client:
        answer = await client.post("/v1.0/publish/pubsub/orders", json={"n": 1})
        assert answer.status_code == 204
        async with running(app):
            await sidecar.printed(b": ready: ")
            (order,) = await app.received(1, "orders")
    assert order["body"]["data"] == {"n": 1}


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "fastapi-dapr"
    if not script.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{script} is not installed: the package's console script is missing")
        pytest.skip(f"{script} is not installed (pip install -e .)")
    done = subprocess.run([str(script), "sidecar", "--help"], capture_output=True, text=True, check=True)
    assert "--app-id" in done.stdout
    assert "--name-resolution" in done.stdout


IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
    "time.sleep(120)"
)


async def test_a_child_that_does_not_stop_is_killed_and_fails_the_test() -> None:
    child = ChildProcess([sys.executable, "-c", IGNORES_SIGTERM], ready=b"up")
    pid = await child.start()
    with pytest.raises(AssertionError, match=rf"\(PID {pid}\) had not stopped 0.5s after signal"):
        await child.stop(timeout=0.5)
    assert child.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


SDK_INVOKE = """
import json, sys
from dapr.conf import settings
settings.DAPR_HTTP_ENDPOINT = sys.argv[1]
settings.DAPR_API_METHOD_INVOCATION_PROTOCOL = "http"
from dapr.clients import DaprClient
with DaprClient() as client:
    response = client.invoke_method(
        "plain", "hello/py", data=b'{"a": 1}', http_verb="POST", content_type="application/json"
    )
    print(json.dumps([response.json(), response.status_code]))
"""


async def test_the_official_python_sdk_invokes_through_the_sidecar() -> None:
    app = App(APP_API_TOKEN="app-secret")
    sidecar = Sidecar("plain", app.port, APP_API_TOKEN="app-secret", DAPR_API_TOKEN="api-secret")
    async with running(app, sidecar):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SDK_INVOKE,
            sidecar.url,
            stdout=asyncio.subprocess.PIPE,
            env=environment(DAPR_API_TOKEN="api-secret"),  # the SDK sends it as dapr-api-token
        )
        out, _ = await communicate(process, 60)
    assert process.returncode == 0
    body, status = json.loads(out)
    assert status == 200
    assert (body["hello"], body["body"], body["token"], body["caller"]) == (
        "py",
        {"a": 1},
        "app-secret",
        "plain",
    )


# -- the official JavaScript SDK ------------------------------------------------------------


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """`@dapr/dapr` installed with npm into a cache folder (once; kept between runs)."""
    node, npm = require_tool("node"), require_tool("npm")
    cache = Path(os.environ.get("FASTAPI_DAPR_NODE_CACHE", Path.home() / ".cache" / "fastapi-dapr-tests"))
    folder = cache / DAPR_JS_SDK.replace("/", "+")
    modules = folder / "node_modules"
    if not (modules / "@dapr" / "dapr" / "package.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        command = [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            subprocess.run([*command, DAPR_JS_SDK], check=True, capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            output = (getattr(exc, "stderr", None) or b"").decode(errors="replace")
            if os.environ.get("CI") == "true":
                pytest.fail(f"npm install {DAPR_JS_SDK} failed: {exc}\n{output}")
            pytest.skip(f"npm install {DAPR_JS_SDK} failed (no registry?): {output.strip()[-300:]}")
    assert Path(node).exists()
    return modules


def node_env(modules: Path, **values: str | None) -> dict[str, str]:
    return environment(NODE_PATH=str(modules), **values)


@pytest.mark.node
@pytest.mark.timeout(720)  # the first one npm-installs the SDK (up to 600 s)
async def test_the_official_js_sdk_publishes_and_invokes_over_http(node_modules: Path) -> None:
    app = App(APP_API_TOKEN="app-secret")
    sidecar = Sidecar("plain", app.port, APP_API_TOKEN="app-secret", DAPR_API_TOKEN="api-secret")
    async with running(app, sidecar):
        process = await asyncio.create_subprocess_exec(
            "node",
            str(JS / "client.js"),
            str(sidecar.port),
            "plain",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=node_env(node_modules, DAPR_API_TOKEN="api-secret"),
        )
        out, err = await communicate(process, 60)
        assert process.returncode == 0, err.decode()
        result = json.loads(out.decode().strip().splitlines()[-1])
        orders = await app.received(2, "orders")
    assert sorted(record["body"]["data"]["from"] for record in orders) == ["js", "js-bulk"]
    assert result["bulk"]["failedMessages"] == []
    assert result["invoked"]["hello"] == "js"
    assert result["invoked"]["query"] == "via=sdk"
    assert result["invoked"]["body"] == {"n": 3}
    assert result["invoked"]["token"] == "app-secret"


@pytest.mark.node
@pytest.mark.timeout(720)  # the first one npm-installs the SDK (up to 600 s)
async def test_the_official_js_sdk_server_receives_deliveries(node_modules: Path) -> None:
    port = free_port()
    sidecar_port = free_port()
    server = ChildProcess(
        ["node", str(JS / "server.js"), str(port), str(sidecar_port)],
        ready=f"Listening on {port}".encode(),
        env=node_env(node_modules, APP_API_TOKEN="app-secret"),
        cwd=ROOT,
    )
    sidecar = Sidecar("jsapp", port, port=sidecar_port, APP_API_TOKEN="app-secret")
    async with running(server, sidecar), sidecar.client() as client:
        await server.printed(b"JS SERVER STARTED")
        answer = await client.post("/v1.0/publish/pubsub/orders", json={"from": "python", "n": 7})
        assert answer.status_code == 204
        line = await server.printed(b"RECEIVED ")
    received = json.loads(line.split(b"RECEIVED ", 1)[1])
    assert received == {"data": {"from": "python", "n": 7}, "token": "app-secret"}
    assert "sent to dead-letter" not in sidecar.text


async def test_the_official_python_sdk_fastapi_extension_receives_deliveries() -> None:
    app = App("sdk_fastapi_app")
    sidecar = Sidecar("pyapp", app.port)
    async with running(app, sidecar), sidecar.client() as client:
        answer = await client.post("/v1.0/publish/pubsub/orders", json={"from": "python", "n": 8})
        assert answer.status_code == 204
        (order,) = await app.received(1, "orders")
    assert order["body"]["data"] == {"from": "python", "n": 8}
    assert order["path"] == "/events/pubsub/orders"  # the extension's own route for the topic


# -- several apps: the name-resolution file -------------------------------------------------


async def test_two_sidecars_share_a_name_resolution_file(tmp_path: Path) -> None:
    names = tmp_path / "names.json"
    app_a = App(PLAIN_APP_NAME="A", APP_API_TOKEN="a-app-secret")
    app_b = App(PLAIN_APP_NAME="B", APP_API_TOKEN="b-app-secret")
    flags = ("--name-resolution", str(names))
    sidecar_a = Sidecar("a", app_a.port, *flags, APP_API_TOKEN="a-app-secret", DAPR_API_TOKEN="a-api")
    sidecar_b = Sidecar("b", app_b.port, *flags, APP_API_TOKEN="b-app-secret", DAPR_API_TOKEN="b-api")
    async with running(app_a, app_b, sidecar_a, sidecar_b), sidecar_a.client("a-api") as client:
        table = json.loads(names.read_text())["apps"]
        assert {key: (entry["host"], entry["port"]) for key, entry in table.items()} == {
            "a": ("127.0.0.1", sidecar_a.port),
            "b": ("127.0.0.1", sidecar_b.port),
        }
        assert names.stat().st_mode & 0o777 == 0o600

        # A's sidecar passes the call to B's sidecar, which calls B with B's own token.
        answer = await client.post("/v1.0/invoke/b/method/hello/from-a?x=2", json={"q": 2})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "hello": "from-a",
            "app": "B",
            "query": "x=2",
            "body": {"q": 2},
            "caller": "a",
            "callee": "b",
            "token": "b-app-secret",
        }
        (call,) = await app_b.received(1, "hello")
        assert "a-api" not in json.dumps(call["headers"])  # A's API token stays with A
        assert "a-app-secret" not in json.dumps(call["headers"])
        via_header = await client.get("/hello/header", headers={"dapr-app-id": "b.default"})
        assert via_header.json()["app"] == "B"

        # B's sidecar-to-sidecar door takes nobody without B's sidecar token.
        async with httpx.AsyncClient(base_url=sidecar_b.url) as direct:
            forged = await direct.get(
                "/fastapi-dapr/v1/invoke/hello/forged",
                headers={"dapr-caller-app-id": "a", "dapr-callee-app-id": "b", "dapr-sidecar-token": "guess"},
            )
            assert forged.status_code == 401
            assert (await direct.get("/v1.0/invoke/b/method/hello/x")).status_code == 401  # B's API token

        # B stops: it leaves the file, and A can no longer reach it.
        assert await sidecar_b.stop() == 0
        assert set(json.loads(names.read_text())["apps"]) == {"a"}
        gone = await client.get("/v1.0/invoke/b/method/hello/again")
        assert gone.status_code == 500
        assert gone.json()["errorCode"] == "ERR_DIRECT_INVOKE"
        assert "couldn't find service: b" in gone.json()["message"]
    assert json.loads(names.read_text())["apps"] == {}
    assert leftovers(names) == []


def leftovers(names: Path) -> list[Path]:
    """Temporary files of the atomic replace left behind in the folder (none, if all went well)."""
    return [
        path
        for path in names.parent.iterdir()
        if path.name.startswith(names.name + ".") and path.suffix != ".lock"
    ]


async def test_an_app_id_taken_by_a_running_sidecar_is_refused(tmp_path: Path) -> None:
    names = tmp_path / "names.json"
    first = Sidecar("a", None, "--name-resolution", str(names))
    async with running(first):
        second = Sidecar("a", None, "--name-resolution", str(names), ready=b"never printed")
        status, output = await run_to_end(second.argv)
        assert status == 1
        assert f"app id 'a' is already registered by the sidecar of process {first.process.pid}" in output  # type: ignore[union-attr]
        assert "Traceback" not in output
        assert json.loads(names.read_text())["apps"]["a"]["port"] == first.port


def holding(lock: Path) -> int:
    """FILE.lock taken by this process, as a sidecar stopped with Ctrl-Z would hold it."""
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def opened(pid: int, path: Path) -> bool:
    """Whether `pid` has `path` open; a descriptor closed while the list is read is not it."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except FileNotFoundError:
            continue
    return False


async def has_open(pid: int, path: Path, timeout: float = 15) -> None:
    """Once process `pid` has `path` open (another process's files: polled, with a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not opened(pid, path):
        assert loop.time() < deadline, f"process {pid} did not open {path}"
        await asyncio.sleep(0.02)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/PID/fd")
async def test_a_held_lock_does_not_keep_a_stop_request_waiting(tmp_path: Path) -> None:
    names = tmp_path / "names.json"
    descriptor = holding(tmp_path / "names.json.lock")
    try:
        sidecar = Sidecar("a", None, "--name-resolution", str(names), ready=b"never printed")
        sidecar.process = await asyncio.create_subprocess_exec(
            *sidecar.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=sidecar.env
        )
        try:
            await has_open(sidecar.process.pid, tmp_path / "names.json.lock")  # it waits for the lock
            sidecar.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(sidecar.process.communicate(), 3)  # not LOCK_WAIT, not ever
        finally:
            await sidecar.stop(signal.SIGKILL)
    finally:
        os.close(descriptor)
    assert sidecar.process is None
    assert b"app id a: stopped before it was registered" in out
    assert b"Traceback" not in out


async def test_calls_from_other_sidecars_are_served_until_serving_ends(tmp_path: Path) -> None:
    names = tmp_path / "names.json"
    app = App()
    sidecar = Sidecar("b", app.port, "--name-resolution", str(names))
    async with running(app, sidecar), httpx.AsyncClient(base_url=sidecar.url) as peer:
        token = json.loads(names.read_text())["apps"]["b"]["token"]
        headers = {"dapr-caller-app-id": "a", "dapr-callee-app-id": "b", "dapr-sidecar-token": token}
        descriptor = holding(tmp_path / "names.json.lock")  # its removal from the file waits
        try:
            sidecar.send_signal(signal.SIGTERM)
            await sidecar.printed(b"SIGTERM received: stopping")
            # A call another sidecar looked up before the entry went: still its token, still served.
            late = await peer.get("/fastapi-dapr/v1/invoke/hello/late", headers=headers)
            assert (late.status_code, late.json()["hello"]) == (200, "late")
        finally:
            os.close(descriptor)
        assert await sidecar.wait() == 0
    assert json.loads(names.read_text())["apps"] == {}


# -- bad input: a clear error, not a traceback ----------------------------------------------


async def run_to_end(argv: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env) if env is not None else environment(),
        cwd=ROOT,
    )
    out, _ = await communicate(process, 30)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


SIDECAR = [sys.executable, "-m", "fastapi_dapr", "sidecar", "--dapr-grpc-port", "0"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--app-port", "1"], "the following arguments are required: --app-id"),
        (["--app-id", "x", "--app-protocol", "h2c"], "--app-protocol h2c: http or grpc are supported"),
        (["--app-id", "x", "--app-port", "http"], "'http' is not a port number"),
        (["--app-id", "x", "--app-port", "70000"], "70000 is not a port number"),
        (["--app-id", "x", "--app-port", "0"], "--app-port 0: the app's port is the one it listens on"),
        (["--app-id", "x", "--dapr-http-max-request-size", "0"], "0 must be at least 1 (MB)"),
        (["--app-id", "x", "--enable-mtls"], "--enable-mtls is not supported"),
        (["--app-id", "x", "--dapr-listen-addresses", "0.0.0.0"], "listens on one loopback address only"),
        (["--app-id", "x", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--app-id", ""], "--app-id: parameter app-id cannot be empty"),  # as daprd
        (["--app-id", "a.b"], "--app-id a.b: parameter app-id cannot contain dots"),
    ],
)
async def test_bad_flags_are_named(flags: list[str], message: str) -> None:
    status, output = await run_to_end([*SIDECAR, *flags])
    assert status == 2
    assert message in output
    assert "Traceback" not in output


async def test_an_app_that_never_listens_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    status, output = await run_to_end(
        [
            *SIDECAR,
            "--app-id",
            "x",
            "--app-port",
            str(port),
            "--dapr-http-port",
            "0",
            "--app-wait-timeout",
            "0.5",
        ]
    )
    assert status == 1
    assert f"the app did not open 127.0.0.1:{port} within 0.5s" in output
    assert "Traceback" not in output


async def test_bad_resources_and_configuration_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: p}\n")
    status, output = await run_to_end([*SIDECAR, "--app-id", "x", "--resources-path", str(tmp_path)])
    assert status == 1
    assert "bad.yaml: Component 'p'" in output
    assert "Traceback" not in output

    config = tmp_path / "config.txt"
    config.write_text("kind: Component\n")
    status, output = await run_to_end([*SIDECAR, "--app-id", "x", "--config", str(config)])
    assert (status, "is not a Dapr Configuration resource" in output) == (1, True)


async def test_an_unusable_name_resolution_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    flags = ["--app-id", "x", "--dapr-http-port", "0", "--name-resolution"]
    status, output = await run_to_end([*SIDECAR, *flags, str(tmp_path / "file" / "names.json")])
    assert status == 1
    assert f"{tmp_path / 'file'}: is not a folder" in output
    assert "Traceback" not in output


async def test_a_configuration_is_read_and_what_is_not_applied_is_named(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: appconfig}\n"
        "spec:\n  tracing: {samplingRate: '1'}\n  features: []\n"
    )
    sidecar = Sidecar("x", None, "--config", str(config), "--dapr-internal-grpc-port", "50002")
    async with running(sidecar):
        pass
    assert "Configuration 'appconfig': spec.tracing is not applied" in sidecar.text
    assert "Configuration 'appconfig': spec.features is not applied" in sidecar.text
    assert "--dapr-internal-grpc-port is ignored" in sidecar.text


async def test_a_bad_subscribe_answer_is_logged_and_the_sidecar_goes_on() -> None:
    app = App(PLAIN_APP_SUBSCRIBE="broken")
    sidecar = Sidecar("plain", app.port)
    async with running(app, sidecar), sidecar.client() as client:
        assert "item 0.metadata.rawPayload: must be a string, not True" in sidecar.text
        assert (await client.get("/v1.0/metadata")).json()["subscriptions"] == []
        assert (await client.get("/v1.0/healthz")).status_code == 204
        answer = await client.get("/v1.0/invoke/plain/method/hello/still")  # invocation still works
        assert answer.json()["hello"] == "still"
    assert "Traceback" not in sidecar.text


async def test_a_subscribe_call_the_app_breaks_is_logged_and_the_sidecar_goes_on(tmp_path: Path) -> None:
    app = RawApp(RAW_APP_SUBSCRIBE="close")  # closes the connection on GET /dapr/subscribe
    await app.start()
    try:
        sidecar = Sidecar("raw", app.port, "--resources-path", str(resources(tmp_path / "resources")))
        async with running(sidecar), sidecar.client() as client:
            assert "GET /dapr/subscribe on the app at" in sidecar.text
            assert "no programmatic subscriptions" in sidecar.text
            listed = (await client.get("/v1.0/metadata")).json()["subscriptions"]
            # The declarative ones are started (daprd starts none: docs/differences.md).
            assert sorted((s["topic"], s["type"]) for s in listed) == [
                ("audits", "DECLARATIVE"),
                ("orders", "DECLARATIVE"),
            ]
            answer = await client.get("/v1.0/invoke/raw/method/still")  # invocation still works
            assert (answer.status_code, answer.json()["target"]) == (200, "/still")
    finally:
        await app.stop()
    assert "Traceback" not in sidecar.text


async def test_a_streamed_body_over_the_limit_to_the_own_app_is_daprs_413() -> None:
    app = App()
    sidecar = Sidecar("plain", app.port, "--dapr-http-max-request-size", "1")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * (512 * 1024)  # chunked: no content-length to refuse it by

    async with running(app, sidecar), sidecar.client() as client:
        answer = await client.post("/v1.0/invoke/plain/method/hello/big", content=body())
        assert answer.status_code == 413
        assert answer.json() == {
            "errorCode": "ERR_DIRECT_INVOKE",
            "message": "the request body is larger than the limit of 1048576 bytes",
        }
        assert (await client.get("/v1.0/invoke/plain/method/hello/after")).json()["hello"] == "after"
    assert "Traceback" not in sidecar.text
    assert "never retrieved" not in sidecar.text


async def test_an_app_that_goes_away_is_daprs_invoke_error() -> None:
    app = App()
    sidecar = Sidecar("plain", app.port)
    async with running(app, sidecar), sidecar.client() as client:
        await app.stop()
        answer = await client.get("/v1.0/invoke/plain/method/hello/gone")
        assert answer.status_code == 500
        assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
        assert f"the app at 127.0.0.1:{app.port} could not be reached" in answer.json()["message"]
    assert "Traceback" not in sidecar.text


# -- observability: the metrics port, JSON logs -----------------------------------------------


async def _scrape_until(url: str, done: Any, timeout: float = 10.0) -> Any:
    """Scrape `url` until `done(scrape)` holds: the sidecar counts a delivery once the app's
    answer is back, which the app itself can't tell the test (another process)."""
    from .test_metrics import Scrape

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            answer = await client.get(url)
            assert answer.status_code == 200, answer.text
            scrape = Scrape(answer.text)
            if done(scrape) or loop.time() > deadline:
                return scrape
            await asyncio.sleep(0.02)


async def test_the_metrics_port_and_json_logs() -> None:
    app = App()
    sidecar = Sidecar("plain", app.port, "--metrics-port", "0", "--log-as-json", DAPR_API_TOKEN="s3cret")
    async with running(app, sidecar), sidecar.client("s3cret") as client:
        (line,) = [json.loads(text) for text in sidecar.text.splitlines() if "metrics listening" in text]
        url = line["msg"].rsplit(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/metrics")
        for topic, data in [("orders", {"n": 1}), ("flaky", {"n": 2}), ("poison", {"n": 3})]:
            answer = await client.post(f"/v1.0/publish/pubsub/{topic}", json=data)
            assert answer.status_code == 204, answer.text
        assert (await client.get("/v1.0/invoke/plain/method/hello/ada")).status_code == 200
        assert (await client.get("/v1.0/invoke/plain/method/missing")).status_code == 404
        await app.received(1, "dead-letters")

        def settled(scrape: Any) -> bool:
            return bool(scrape.value("fastapi_dapr_pubsub_messages_total") >= 4)

        metrics = await _scrape_until(url, settled)
        # The metrics port needs no API token (as daprd's), and answers nothing else.
        async with httpx.AsyncClient() as anonymous:
            assert (await anonymous.get(url.replace("/metrics", "/v1.0/metadata"))).status_code == 404
            proxied = await anonymous.get(url, headers={"x-forwarded-for": "10.1.2.3"})
            assert proxied.status_code == 403
        # The API port does not serve metrics.
        assert (await client.get("/metrics")).status_code != 200

    common = {"app_id": "plain", "component": "pubsub", "namespace": "default"}
    assert metrics.value("dapr_component_pubsub_egress_count", **common, success="true") == 3
    ingress = "dapr_component_pubsub_ingress_count"
    assert metrics.value(ingress, topic="orders", process_status="success", status="success") == 1
    assert metrics.value(ingress, topic="flaky", process_status="retry", status="retry") == 1
    assert metrics.value(ingress, topic="flaky", process_status="success") == 1
    assert metrics.value(ingress, topic="poison", process_status="drop", status="success") == 1
    assert metrics.value(ingress, topic="poison-dead", process_status="success") == 1
    metrics.check_histogram("dapr_component_pubsub_ingress_latencies")
    outcomes = "fastapi_dapr_pubsub_messages_total"
    assert metrics.value(outcomes, topic="poison", outcome="dead-lettered") == 1
    assert metrics.value(outcomes, outcome="delivered") == 3
    assert metrics.value("fastapi_dapr_pubsub_delivery_retries_total", topic="flaky") == 1
    assert metrics.value("fastapi_dapr_pubsub_dead_letter_total", dead_letter_topic="poison-dead") == 1
    received = "dapr_service_invocation_res_recv_total"
    assert metrics.value("dapr_service_invocation_req_sent_total", dst_app_id="plain") == 2
    assert metrics.value(received, src_app_id="plain", status="200") == 1
    assert metrics.value(received, src_app_id="plain", status="404") == 1

    lines = [json.loads(text) for text in sidecar.text.splitlines() if text.startswith("{")]
    assert len(lines) == len(sidecar.text.splitlines())  # every line is JSON
    (dead,) = [line for line in lines if line.get("outcome") == "dead-lettered"]
    assert dead["level"] == "warning"
    assert dead["scope"] == "fastapi_dapr.delivery"
    assert dead["app_id"] == "plain"
    assert (dead["pubsub"], dead["topic"], dead["dead_letter_topic"]) == ("pubsub", "poison", "poison-dead")
    assert dead["attempts"] == 1
    assert dead["reason"] == "the app answered DROP"
    assert dead["event_id"]
    assert dead["traceparent"] == ""  # the publisher sent none


@pytest.mark.parametrize(
    ("flags", "serves"),
    [
        ([], False),  # off by default (daprd's default is on: see docs/standalone.md)
        (["--enable-metrics=false", "--metrics-port", "PORT"], False),
        (["--enable-metrics", "--metrics-port", "PORT"], True),
        (["--metrics-port", "PORT"], True),
    ],
)
async def test_metrics_flags(flags: list[str], serves: bool) -> None:
    port = free_port()
    sidecar = Sidecar("x", None, *[str(port) if flag == "PORT" else flag for flag in flags])
    async with running(sidecar):
        async with httpx.AsyncClient() as client:
            try:
                answer = await client.get(f"http://127.0.0.1:{port}/metrics")
            except httpx.ConnectError:
                answer = None
        assert (answer is not None and answer.status_code == 200) == serves
        assert ("metrics listening" in sidecar.text) == serves
        if answer is not None and serves:
            assert "# TYPE dapr_component_pubsub_egress_count counter" in answer.text


async def test_a_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        status, output = await run_to_end([*SIDECAR, "--app-id", "x", "--metrics-port", str(port)])
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert "(--metrics-port)" in output
    assert "Traceback" not in output


async def test_trace_context_through_the_app_channel_and_between_sidecars(tmp_path: Path) -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    names = tmp_path / "names.json"
    app_a, app_b = App(PLAIN_APP_NAME="A"), App(PLAIN_APP_NAME="B")
    sidecar_a = Sidecar("a", app_a.port, "--name-resolution", str(names))
    sidecar_b = Sidecar("b", app_b.port, "--name-resolution", str(names))
    async with running(app_a, app_b, sidecar_a, sidecar_b), sidecar_a.client() as client:
        traced = {"traceparent": tp, "tracestate": "k=v"}
        own = await client.get("/v1.0/invoke/a/method/hello/own", headers=traced)
        other = await client.get("/v1.0/invoke/b/method/hello/other", headers=traced)
        bad = await client.get("/v1.0/invoke/b/method/hello/bad", headers={"traceparent": "00-x-y-01"})
        published = await client.post("/v1.0/publish/pubsub/orders", json={"n": 1}, headers=traced)
        assert (own.status_code, other.status_code, bad.status_code, published.status_code) == (200,) * 3 + (
            204,
        )
        assert own.headers["traceparent"] == other.headers["traceparent"] == tp  # daprd's answers
        assert "traceparent" not in bad.headers
        (at_a,) = await app_a.received(1, "hello")
        at_b_good, at_b_bad = await app_b.received(2, "hello")
        (delivered,) = await app_a.received(1, "orders")
    for call in (at_a, at_b_good, delivered):
        assert (call["headers"]["traceparent"], call["headers"]["tracestate"]) == (tp, "k=v")
    assert "traceparent" not in at_b_bad["headers"]
    assert delivered["body"]["traceparent"] == tp
