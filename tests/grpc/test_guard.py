"""The gRPC API's guard: with DAPR_API_TOKEN set, the SDK's `dapr-api-token` metadata (it sends
its own DAPR_API_TOKEN) is required and checked, as daprd checks it; without one, only local
peers, read from grpc's peer strings."""

from __future__ import annotations

from typing import Any

import pytest

from fastapi_dapr.sidecar.grpc_api.peer import peer_host

from ..sidecar.test_standalone import running
from .kit import GrpcApp, GrpcSidecar, run_sdk

TOKEN = "s3cret-token"

# The SDK's answer to a call: the app id, or the status it raised as (code, message, ErrorInfo).
CALL = """
    import json
    from {module} import DaprClient
    from dapr.clients.exceptions import DaprGrpcError

    async def main():
        try:
            {open_client}
                answer = {get_metadata}
            return answer.application_id
        except DaprGrpcError as exc:
            return [exc.code().name, exc.details(), exc.status_details().error_info]

    import asyncio
    print(json.dumps(asyncio.run(main())))
"""
SYNC = CALL.format(
    module="dapr.clients", open_client="with DaprClient() as client:", get_metadata="client.get_metadata()"
)
AIO = CALL.format(
    module="dapr.aio.clients",
    open_client="async with DaprClient() as client:",
    get_metadata="await client.get_metadata()",
)


def unauthenticated(detail: str) -> list[Any]:
    """daprd's answer (ErrorFromHTTPResponseCode(401, detail)): the status text, and the detail
    in the ErrorInfo."""
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "Unauthorized",
        "domain": "dapr.io",
        "metadata": {"http.code": "401", "http.error_message": detail},
    }
    return ["UNAUTHENTICATED", "Unauthorized", info]


@pytest.mark.process
async def test_the_embedded_apps_grpc_api_checks_the_token() -> None:
    app = GrpcApp(DAPR_API_TOKEN=TOKEN)
    async with running(app):
        ports = {"http_port": app.port, "grpc_port": app.grpc_port}
        # The SDK's start-up health check is HTTP's, which needs no token (as daprd's).
        assert await run_sdk(SYNC, **ports) == unauthenticated("missing api token in request metadata")
        wrong = await run_sdk(SYNC, **ports, token="not-it")
        assert wrong == unauthenticated("authentication error: api token mismatch")
        assert await run_sdk(SYNC, **ports, token=TOKEN) == "grpcapp"
        assert await run_sdk(AIO, **ports, token=TOKEN) == "grpcapp"


@pytest.mark.process
async def test_the_standalone_sidecars_grpc_api_checks_the_token() -> None:
    sidecar = GrpcSidecar("standalone", None, DAPR_API_TOKEN=TOKEN)
    async with running(sidecar):
        ports = {"http_port": sidecar.port, "grpc_port": sidecar.grpc_port}
        wrong = await run_sdk(AIO, **ports, token="not-it")
        assert wrong == unauthenticated("authentication error: api token mismatch")
        assert await run_sdk(AIO, **ports, token=TOKEN) == "standalone"


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:35948", "127.0.0.1"),
        ("ipv4:10.1.2.3:1", "10.1.2.3"),
        ("ipv6:%5B::1%5D:54354", "::1"),  # as grpcio writes an IPv6 peer
        ("ipv6:[::1]:54354", "::1"),
        ("ipv6:%5Bfe80::1%25eth0%5D:80", "fe80::1%eth0"),
        ("unix:/tmp/dapr.sock", ""),
        ("unix-abstract:dapr", ""),
        ("", ""),
    ],
)
def test_peer_host_reads_grpcs_peer_strings(peer: str, host: str) -> None:
    assert peer_host(peer) == host
