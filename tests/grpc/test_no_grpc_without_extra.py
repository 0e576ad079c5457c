"""Without the `[grpc]` extra nothing of gRPC is loaded, and asking for gRPC is an error that
names the install command; each check in a fresh interpreter, since this one has the extra
loaded. "Without the extra" is a `grpc` package first on PYTHONPATH that fails to import, as
a missing one does, so that the real `fastapi-dapr` command is run too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..sidecar.test_standalone import ROOT, environment

pytestmark = pytest.mark.process

INSTALL = "pip install 'fastapi-dapr[grpc]'"

# The embedded sidecar through the app's whole lifespan, and the standalone's modules imported.
NOTHING_LOADED = """
import json, sys
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fastapi_dapr import Dapr

app = FastAPI()
dapr = Dapr(app, app_id="plain")

@app.get("/hello")
async def hello():
    await dapr.publish("pubsub", "orders", {"n": 1})
    return "hello"

with TestClient(app) as client:
    assert client.get("/hello").json() == "hello"
    assert client.get("/v1.0/metadata").json()["id"] == "plain"
import fastapi_dapr.sidecar.standalone, fastapi_dapr.sidecar.cli, fastapi_dapr.testing
GRPC = ("grpc", "grpc_status", "dapr")  # dapr: the official SDK, whose stubs the extra brings
loaded = sorted(
    name for name in sys.modules
    if name.split(".")[0] in GRPC or name.startswith(("google.protobuf", "google.rpc"))
)
print(json.dumps(loaded))
"""


def run(argv: list[str], shadow: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = environment()
    if shadow is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def without_grpc(tmp_path: Path) -> Path:
    """A folder whose `grpc` package fails to import as an absent one does."""
    package = tmp_path / "grpc"
    package.mkdir()
    (package / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'grpc\'", name="grpc")\n'
    )
    return tmp_path


def test_the_embedded_sidecar_and_the_standalones_modules_load_no_grpc() -> None:
    done = run([sys.executable, "-c", NOTHING_LOADED])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_without_grpc_the_package_still_imports_and_serves(without_grpc: Path) -> None:
    done = run([sys.executable, "-c", NOTHING_LOADED], without_grpc)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_asking_the_embedded_sidecar_for_grpc_names_the_extra(without_grpc: Path) -> None:
    code = """
from fastapi import FastAPI
from fastapi_dapr import Dapr
try:
    Dapr(FastAPI(), grpc_port=0)
except ImportError as exc:
    print(exc)
"""
    done = run([sys.executable, "-c", code], without_grpc)
    assert done.returncode == 0, done.stderr
    assert INSTALL in done.stdout
    assert "missing: grpc" in done.stdout


def test_asking_the_standalone_sidecar_for_grpc_names_the_extra(without_grpc: Path) -> None:
    command = str(Path(sys.executable).with_name("fastapi-dapr"))
    done = run([command, "sidecar", "--app-id", "x", "--dapr-grpc-port", "0"], without_grpc)
    assert done.returncode == 2
    assert INSTALL in done.stderr
    done = run(
        [command, "sidecar", "--app-id", "x", "--app-protocol", "grpc", "--app-port", "1"], without_grpc
    )
    assert done.returncode == 2
    assert INSTALL in done.stderr


def test_the_standalone_sidecar_without_the_extra_serves_no_grpc_unasked(without_grpc: Path) -> None:
    """daprd serves gRPC by default; without the extra, and without the flag, the standalone
    serves HTTP only (its options say no gRPC port) instead of refusing to start."""
    code = """
import argparse, sys
from fastapi_dapr.sidecar import cli
arguments = cli.parser().parse_args(["sidecar", "--app-id", "x"])
def fail(message):
    sys.exit(f"refused: {message}")
print(cli._options(arguments, fail).dapr_grpc_port)
"""
    done = run([sys.executable, "-c", code], without_grpc)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
