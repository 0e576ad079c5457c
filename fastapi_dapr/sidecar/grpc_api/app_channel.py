"""The gRPC app channel (placeholder)."""

from __future__ import annotations

from typing import Any

__all__: list[str] = []


class GrpcAppChannel:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    async def wait_until_listening(self, timeout: float | None) -> None:
        raise NotImplementedError

    async def subscriptions(self, app_id: str, app_api_token: str | None) -> list[Any]:
        raise NotImplementedError
