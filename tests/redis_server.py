"""A real redis-server on a free loopback port, started and stopped (by its PID) by the tests."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .conftest import require_tool
from .processes import ChildProcess


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer(ChildProcess):
    """One redis-server; `restart()` keeps its port and its data folder.

    With `tls` (certificate, key and CA files), it speaks only TLS on its port, and
    asks clients for a certificate of that CA when `client_certificates` is set.
    """

    def __init__(
        self,
        folder: Path,
        *,
        persistent: bool = False,
        tls: tuple[Path, Path, Path] | None = None,
        client_certificates: bool = False,
    ) -> None:
        self.folder = folder
        self.port = _free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--save", ""]
        listen = ["--port", str(self.port)]
        if tls is not None:
            certificate, key, ca = tls
            listen = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(certificate), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(ca),
                "--tls-auth-clients", "yes" if client_certificates else "no",
            ]  # fmt: skip
        argv = [
            require_tool("redis-server"),
            *listen, "--bind", "127.0.0.1", "--dir", str(folder), "--protected-mode", "no", *persistence,
        ]  # fmt: skip
        super().__init__(argv, ready=b"Ready to accept connections")

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def redis_server(folder: Path, **options: Any) -> AsyncIterator[RedisServer]:
    server = RedisServer(folder, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
