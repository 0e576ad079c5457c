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


async def test_the_standalone_sidecar_counts_grpc_calls_on_its_metrics_port() -> None:
    import re

    import httpx

    sidecar = GrpcSidecar("counted", None, "--metrics-port", "0")
    async with running(sidecar):
        assert await run_sdk(METADATA, http_port=sidecar.port, grpc_port=sidecar.grpc_port) == "counted"
        found = (
            re.search(r"metrics listening on (http://\S+/metrics)", line.decode()) for line in sidecar.output
        )
        url = next(m for m in found if m is not None).group(1)
        async with httpx.AsyncClient() as client:
            scrape = (await client.get(url)).text
    method = "/dapr.proto.runtime.v1.Dapr/GetMetadata"
    assert re.search(
        rf'dapr_grpc_io_server_completed_rpcs\{{app_id="counted",grpc_server_method="{method}",'
        rf'grpc_server_status="OK"\}} [1-9]',
        scrape,
    ), scrape
