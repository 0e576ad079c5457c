"""The README's quickstart, run as written: curl against the example app served by uvicorn."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path

import pytest

from example_app.main import app
from example_app.store import store
from fastapi_dapr.testing import DaprTest

from .conftest import require_tool
from .processes import communicate
from .servers import serve

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.process  # curl


def quickstart_shell() -> list[tuple[str, str | None]]:
    """The curl commands of the quickstart, each with the output the README shows after it."""
    section = README.read_text().split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    return curl_commands(block.group(1))


def curl_commands(shell: str) -> list[tuple[str, str | None]]:
    lines = shell.replace("\\\n", " ").splitlines()
    commands: list[tuple[str, str | None]] = []
    for line in lines:
        if line.startswith("curl"):
            commands.append((line, None))
        elif line.startswith("# ") and commands:
            commands[-1] = (commands[-1][0], line[2:])
    return commands


async def run(command: str, base_url: str) -> str:
    argv = [part.replace("http://127.0.0.1:8000", base_url) for part in shlex.split(command)]
    process = await asyncio.create_subprocess_exec(
        *argv, "--silent", "--show-error", "--fail", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await communicate(process, 60)
    assert process.returncode == 0, command
    return out.decode()


async def test_quickstart_curl_reaches_the_example_handler() -> None:
    require_tool("curl")
    publish, read = quickstart_shell()
    assert "/v1.0/publish/pubsub/orders" in publish[0]
    store.clear()
    async with DaprTest(app) as dapr_test, serve(app) as base_url:
        assert await run(publish[0], base_url) == ""  # 204
        report = await dapr_test.wait_for_delivery(topic="orders")
        assert report.outcome == "delivered"
        answer = await run(read[0], base_url)
    assert read[1] is not None
    assert json.loads(answer) == json.loads(read[1])


async def test_the_example_apps_readme_commands(tmp_path: Path) -> None:
    """example_app/README.md's curl commands, in order, and the outputs it shows."""
    from example_app.test_app import resources

    require_tool("curl")
    page = (README.parent / "example_app" / "README.md").read_text()
    block = page.split("Try it", 1)[1]
    commands = curl_commands(re.findall(r"```bash\n(.*?)```", block, re.S)[0])
    assert len(commands) == 5
    store.clear()
    async with serve(app) as base_url:
        with resources(tmp_path, app_url=base_url):
            async with DaprTest(app) as dapr_test:
                for command, shown in commands:
                    output = await run(command, base_url)
                    if command.startswith("curl -X POST"):  # POST /orders and /payments publish
                        topic = command.split()[3].rsplit("/", 1)[1]
                        report = await dapr_test.wait_for_delivery(topic=topic)
                        assert report.outcome == "delivered"
                    assert shown is not None, command
                    assert json.loads(output) == json.loads(shown), command
