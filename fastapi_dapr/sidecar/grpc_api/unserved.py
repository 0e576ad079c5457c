"""The RPCs of the blocks this sidecar does not serve (placeholder)."""

from __future__ import annotations

from typing import Any

import grpc

from . import errors

__all__: list[str] = []

ANSWERS: dict[str, Any] = {}


async def answer(service: Any, name: str, request: Any, context: Any) -> Any:
    await errors.abort(context, grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented")
