"""A real redis-server on a free loopback port, started and stopped (by its PID) by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from .conftest import require_tool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; `restart()` keeps its port and its data folder."""

    def __init__(self, folder: Path, *, persistent: bool = False) -> None:
        self.binary = require_tool("redis-server")
        self.folder = folder
        self.port = _free_port()
        self.persistent = persistent
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--save", ""]
        )
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--protected-mode", "no", *persistence,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert self.process.stdout is not None
        # Ready when it says so: read its log, no polling.
        seen = []
        while True:
            line = await asyncio.wait_for(self.process.stdout.readline(), 30)
            if not line:
                raise RuntimeError("redis-server exited:\n" + b"".join(seen).decode(errors="replace"))
            seen.append(line)
            if b"Ready to accept connections" in line:
                break
        self._drain = asyncio.ensure_future(self._discard_output())

    async def _discard_output(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        while await self.process.stdout.readline():
            pass

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, sig)
        await self.process.wait()
        await self._drain
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@contextlib.asynccontextmanager
async def redis_server(folder: Path, *, persistent: bool = False) -> AsyncIterator[RedisServer]:
    server = RedisServer(folder, persistent=persistent)
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.resume()  # a paused server would not hear the signal
        await server.stop()
