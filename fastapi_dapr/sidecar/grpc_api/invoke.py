"""InvokeService, as daprd serves it (placeholder)."""

from __future__ import annotations

from typing import Any

import grpc

from . import errors

__all__: list[str] = []


async def invoke_service(service: Any, request: Any, context: Any) -> Any:
    await errors.abort(context, grpc.StatusCode.UNIMPLEMENTED, "InvokeService is not implemented yet")
