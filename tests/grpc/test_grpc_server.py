"""The gRPC API's server: where it listens, its guard, and its life with the app."""

from __future__ import annotations

import pytest

from ..sidecar.test_standalone import running
from .kit import GrpcApp, GrpcSidecar, run_sdk

pytestmark = pytest.mark.process

METADATA = """
    import json
    from dapr.clients import DaprClient
    with DaprClient() as client:
        print(json.dumps(client.get_metadata().application_id))
"""


async def test_the_sdk_reaches_the_embedded_apps_grpc_api() -> None:
    app = GrpcApp()
    async with running(app):
        assert await run_sdk(METADATA, http_port=app.port, grpc_port=app.grpc_port) == "grpcapp"


async def test_the_sdk_reaches_the_standalone_sidecars_grpc_api() -> None:
    sidecar = GrpcSidecar("standalone", None)
    async with running(sidecar):
        assert await run_sdk(METADATA, http_port=sidecar.port, grpc_port=sidecar.grpc_port) == "standalone"
