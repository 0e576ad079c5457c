"""What the package writes under uvicorn, run as a user runs it: with uvicorn's default log
configuration, each line shows its level and logger and INFO lines appear; with the user's own
configuration, each line is written once, their way; and `--workers 2` with the in-memory broker
warns, in each worker, that messages do not cross workers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest

from ..processes import ChildProcess

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.feedback_app:app"
START = "embedded mode (DAPR_HTTP_PORT is not set): app id 'feedback'"

pytestmark = pytest.mark.process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Uvicorn(ChildProcess):
    """`uvicorn tests.apps.feedback_app:app` with `options`, on a free loopback port."""

    def __init__(self, *options: str, ready: bytes = b"Application startup complete") -> None:
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            APP,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *options,
        ]
        env = {key: value for key, value in os.environ.items() if not key.startswith(("DAPR_", "APP_"))}
        env.pop("WEB_CONCURRENCY", None)
        super().__init__(argv, ready=ready, env=env, cwd=ROOT)

    async def publish(self) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            assert (await client.post("/publish")).status_code == 204

    async def printed_times(self, text: str, count: int, timeout: float = 30) -> None:
        """Once `text` is in `count` lines of its output."""
        seen = self._printed

        def enough() -> bool:
            return sum(text.encode() in line for line in self.output) >= count

        async with seen:
            await asyncio.wait_for(seen.wait_for(enough), timeout)

    def lines(self, text: str) -> list[str]:
        return [line for line in self.text.splitlines() if text in line]


async def test_under_uvicorns_defaults_lines_show_level_and_logger_and_info_appears() -> None:
    server = Uvicorn()
    await server.start()
    try:
        await server.publish()
        await server.printed(b"WARNING:  fastapi_dapr.delivery: event ")
    finally:
        await server.stop()
    assert len(server.lines(START)) == 1
    (start,) = server.lines(START)
    assert start.startswith(f"INFO:     fastapi_dapr: {START}; components: pubsub (pubsub.in-memory); ")
    (dropped,) = server.lines("fastapi_dapr.delivery")
    assert dropped.startswith("WARNING:  fastapi_dapr.delivery: event ")
    assert dropped.endswith("dropped: the app answered DROP; no dead-letter topic")
    # Nothing of the package's written without its level (Python's last-resort handler's way).
    assert not [line for line in server.text.splitlines() if line.startswith("event ")]


async def test_with_the_users_log_config_each_line_is_written_once_their_way(tmp_path: Path) -> None:
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"mine": {"format": "%(levelname)s|%(name)s|%(message)s"}},
        "handlers": {
            "out": {"class": "logging.StreamHandler", "formatter": "mine", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["out"], "level": "INFO"},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    server = Uvicorn("--log-config", str(path))
    await server.start()
    try:
        await server.publish()
        await server.printed(b"WARNING|fastapi_dapr.delivery|event ")
    finally:
        await server.stop()
    (start,) = server.lines(START)  # once: through the user's handler, not the package's as well
    assert start.startswith(f"INFO|fastapi_dapr|{START}")
    assert len(server.lines("dropped: the app answered DROP")) == 1


async def test_the_log_config_of_the_docs_writes_the_packages_lines_as_json() -> None:
    server = Uvicorn("--log-config", str(ROOT / "docs" / "examples" / "logging.yaml"))
    await server.start()
    try:
        await server.publish()
        await server.printed(b'"outcome": "dropped"')
    finally:
        await server.stop()
    package = [json.loads(line) for line in server.text.splitlines() if line.startswith("{")]
    start, dropped = package
    assert (start["level"], start["scope"], start["app_id"]) == ("info", "fastapi_dapr", "checkout")
    assert start["msg"].startswith(START)
    assert (dropped["level"], dropped["scope"], dropped["reason"]) == (
        "warning",
        "fastapi_dapr.delivery",
        "the app answered DROP",
    )
    assert " INFO uvicorn.error: Application startup complete." in server.text  # uvicorn's, as text


async def test_several_workers_with_the_in_memory_broker_warn_that_messages_do_not_cross() -> None:
    server = Uvicorn("--workers", "2")
    await server.start()
    warning = "WARNING:  fastapi_dapr: this process is one of 2 workers (uvicorn --workers 2)"
    try:
        await server.printed_times(warning, 2)
    finally:
        await server.stop()
    first, second = server.lines(warning)
    assert first == second
    assert "each worker has in-memory pub/sub components of its own ('pubsub')" in first
    assert "delivered only to that worker's subscriptions" in first
    assert "use a pubsub.redis component" in first


async def test_one_worker_does_not_warn() -> None:
    server = Uvicorn("--workers", "1")
    await server.start()
    await server.stop()
    assert len(server.lines(START)) == 1
    assert not server.lines("workers")
