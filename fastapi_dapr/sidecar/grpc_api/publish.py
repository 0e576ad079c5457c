"""PublishEvent, BulkPublishEvent and BulkPublishEventAlpha1, as daprd serves them (placeholder)."""

from __future__ import annotations

from typing import Any

import grpc

from . import errors

__all__: list[str] = []


async def publish_event(service: Any, request: Any, context: Any) -> Any:
    await errors.abort(context, grpc.StatusCode.UNIMPLEMENTED, "PublishEvent is not implemented yet")


async def bulk_publish_event(service: Any, request: Any, context: Any) -> Any:
    await errors.abort(context, grpc.StatusCode.UNIMPLEMENTED, "BulkPublishEvent is not implemented yet")
