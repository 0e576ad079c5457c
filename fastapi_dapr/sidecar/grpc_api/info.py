"""GetSecret, GetBulkSecret, GetMetadata, SetMetadata and Shutdown (placeholder)."""

from __future__ import annotations

from typing import Any

import grpc

from . import errors

__all__: list[str] = []


async def _todo(context: Any) -> Any:
    await errors.abort(context, grpc.StatusCode.UNIMPLEMENTED, "not implemented yet")


async def get_secret(service: Any, request: Any, context: Any) -> Any:
    return await _todo(context)


async def get_bulk_secret(service: Any, request: Any, context: Any) -> Any:
    return await _todo(context)


async def get_metadata(service: Any, request: Any, context: Any) -> Any:
    from dapr.proto.runtime.v1 import metadata_pb2

    runtime = await service.running(context)
    return metadata_pb2.GetMetadataResponse(id=runtime.app_id)


async def set_metadata(service: Any, request: Any, context: Any) -> Any:
    return await _todo(context)


async def shutdown(service: Any, request: Any, context: Any) -> Any:
    return await _todo(context)
