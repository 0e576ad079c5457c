"""SubscribeTopicEventsAlpha1: streaming subscriptions (placeholder)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from . import errors

__all__: list[str] = []


class Streams:
    def __init__(self, service: Any) -> None:
        self.service = service

    async def subscribe(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        await errors.abort(context, grpc.StatusCode.UNIMPLEMENTED, "not implemented yet")
        yield None  # pragma: no cover

    async def close(self) -> None:
        return None
