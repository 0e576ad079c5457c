"""What the gRPC tests share: the embedded app serving gRPC, the standalone sidecar with its
gRPC port, and the official SDK run in a process of its own.

`run_sdk(code, ...)` runs `code` in a new Python process with the SDK's environment set
(DAPR_HTTP_PORT, DAPR_GRPC_PORT, DAPR_API_TOKEN when given) and returns the JSON value its
last line printed: the SDK is a peer, never imported by the test process.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ..processes import ChildProcess, communicate
from ..sidecar.test_standalone import ROOT, Sidecar, environment, free_port

pytestmark = pytest.mark.process


STORE = "localsecretstore"
SECRETS = {"password": "s3cret", "user": "admin"}


def secret_store(folder: Path) -> Path:
    """A resources folder with a secretstores.local.file store named STORE holding SECRETS (the
    default in-memory pubsub stays)."""
    folder.mkdir()
    (folder / "secrets.json").write_text(json.dumps(SECRETS))
    (folder / "secretstore.yaml").write_text(
        f"apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {STORE}}}\n"
        "spec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n"
        f'  - {{name: secretsFile, value: "{folder / "secrets.json"}"}}\n'
    )
    return folder


class GrpcApp(ChildProcess):
    """tests/apps/grpc_app.py under uvicorn: `port` its HTTP port, `grpc_port` its gRPC API's."""

    def __init__(self, *, resources: Path | None = None, **env: str | None) -> None:
        self.port = free_port()
        # Chosen here, not by the app's own port 0: the app binds its gRPC port in its lifespan,
        # before uvicorn binds the HTTP one, and the system could hand it `port` again.
        self.grpc_port = free_port()
        while self.grpc_port == self.port:
            self.grpc_port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "tests.apps.grpc_app:app"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"]
        values = {"RESOURCES": str(resources) if resources else None, "GRPC_PORT": str(self.grpc_port), **env}
        super().__init__(argv, ready=b"Uvicorn running on", env=environment(**values), cwd=ROOT)

    async def start(self) -> int:
        pid = await super().start()
        found = (re.search(rb"gRPC API on 127\.0\.0\.1:(\d+)", line) for line in self.output)
        self.grpc_port = int(next(m for m in found if m is not None).group(1))
        return pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class GrpcSidecar(Sidecar):
    """The standalone sidecar with its gRPC API on a free port (`grpc_port`, from its ready line)."""

    def __init__(self, app_id: str, app_port: int | None, *extra: str, **env: str | None) -> None:
        super().__init__(app_id, app_port, "--dapr-grpc-port", "0", *extra, **env)
        self.grpc_port = 0

    async def start(self) -> int:
        pid = await super().start()
        found = (re.search(rb"gRPC API on [^\s\"]+:(\d+)", line) for line in self.output)
        self.grpc_port = int(next(m for m in found if m is not None).group(1))
        return pid


async def run_sdk(
    code: str,
    *,
    http_port: int,
    grpc_port: int,
    token: str | None = None,
    timeout: float = 60,
    **env: str | None,
) -> Any:
    """Run `code` (dedented) in a new Python process with the SDK pointed at the ports; the JSON
    value of the last line it printed. A non-zero exit fails the test with what it printed."""
    import asyncio

    values: dict[str, str | None] = {
        "DAPR_HTTP_PORT": str(http_port),
        "DAPR_GRPC_PORT": str(grpc_port),
        "DAPR_RUNTIME_HOST": "127.0.0.1",
        "DAPR_API_TOKEN": token,
        "DAPR_HEALTH_TIMEOUT": "20",
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(code),
        env=environment(**values),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await communicate(process, timeout)
    if process.returncode != 0:
        pytest.fail(f"the SDK process failed ({process.returncode}):\n{out.decode()}\n{err.decode()}")
    lines = out.decode().strip().splitlines()
    assert lines, f"the SDK process printed nothing:\n{err.decode()}"
    return json.loads(lines[-1])
