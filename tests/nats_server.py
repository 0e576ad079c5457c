"""A private `nats-server -js` for the tests, on a free loopback port, stopped by its PID.

Debian's nats-server (2.9) with JetStream on, its file store under the test's folder;
`restart()` (SIGTERM, then started again) and `crash()` (SIGKILL) keep its port and its
store, as a server restarted in place does. `token` makes it require that token; `tls`
(certificate, key and CA files) makes it speak TLS only, and ask for a client
certificate of that CA with `client_certificates`.

Missing locally, nats-server skips the test; in CI (CI=true) it fails it.

The streams are made as a user makes them (`add_stream`), with nats-py: daprd's component
creates none, and neither does this one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from .conftest import require_tool
from .processes import ChildProcess

__all__ = ["NatsServer", "add_stream", "nats_server"]

DEBIAN_PATH = "/usr/sbin/nats-server"  # not on a user's PATH


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary() -> str:
    found = shutil.which("nats-server")
    if found is None and os.access(DEBIAN_PATH, os.X_OK):
        return DEBIAN_PATH
    return found or require_tool("nats-server")


class NatsServer(ChildProcess):
    """One nats-server with JetStream, its store in `folder`."""

    def __init__(
        self,
        folder: Path,
        *,
        token: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        client_certificates: bool = False,
    ) -> None:
        self.folder = folder
        self.port = _free_port()
        self.tls = tls is not None
        argv = [
            _binary(), "-js", "-sd", str(folder / "nats-store"), "-a", "127.0.0.1", "-p", str(self.port),
            "-n", f"test-{self.port}",
        ]  # fmt: skip
        if token is not None:
            argv += ["--auth", token]
        if tls is not None:
            certificate, key, ca = tls
            argv += ["--tls", "--tlscert", str(certificate), "--tlskey", str(key), "--tlscacert", str(ca)]
            if client_certificates:
                argv.append("--tlsverify")
        super().__init__(argv, ready=b"Server is ready")

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def nats_server(folder: Path, **options: Any) -> AsyncIterator[NatsServer]:
    server = NatsServer(folder, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def add_stream(url: str, name: str, subjects: Sequence[str], **config: Any) -> None:
    """A stream, as a user makes one before the apps start (file storage unless `storage`)."""
    import nats
    from nats.js.api import StreamConfig

    client = await nats.connect(url)
    try:
        await client.jetstream().add_stream(StreamConfig(name=name, subjects=list(subjects), **config))
    finally:
        await client.close()
