"""`Dapr`: one per app, the entry point that ties the app to Dapr."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._handler import token_error
from ._routing import collect_handlers, subscribe_on
from ._subscription import BulkSubscribe, TopicSubscription, merge_subscriptions

__all__ = ["Dapr"]

F = TypeVar("F", bound=Callable[..., Any])


class Dapr:
    """Dapr's programming model on a FastAPI app.

    `Dapr(app)` adds `GET /dapr/subscribe`, which lists every subscription of
    the app, from `Dapr.subscribe` and from every included `DaprRouter`, and
    checks them when the app starts, so that a duplicate or conflicting
    subscription stops the app instead of never being reached.

    `app_id` defaults to `APP_ID` (set by `dapr run`), and `app_api_token` to
    `APP_API_TOKEN`: when set, deliveries and `/dapr/subscribe` are refused
    with 401 unless they carry it in `dapr-api-token`, as daprd sends it.
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        app_id: str | None = None,
        app_api_token: str | None = None,
    ) -> None:
        existing = getattr(app.state, "fastapi_dapr", None)
        if existing is not None:
            raise RuntimeError(
                f"this app already has {existing!r}; a second Dapr instance would shadow "
                "the first one's subscriptions: create one per app and share it"
            )
        self.app = app
        self.app_id: str = app_id or os.environ.get("APP_ID") or "app"
        self.app_api_token: str | None = (
            app_api_token if app_api_token is not None else os.environ.get("APP_API_TOKEN")
        ) or None
        app.state.fastapi_dapr = self
        app.add_api_route(
            "/dapr/subscribe",
            self._subscribe_endpoint,
            methods=["GET"],
            include_in_schema=False,
            name="dapr:subscribe",
        )
        self._wrap_lifespan()

    def __repr__(self) -> str:
        return f"Dapr(app_id={self.app_id!r})"

    def subscribe(
        self,
        pubsub: str,
        topic: str,
        *,
        route: str | None = None,
        match: str | None = None,
        priority: int | None = None,
        dead_letter_topic: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        raw_payload: bool = False,
        bulk: BulkSubscribe | bool | None = None,
    ) -> Callable[[F], F]:
        """Deliver the messages of `topic` on `pubsub` to the decorated handler.

        Returns the handler unchanged. See `DaprRouter.subscribe`.
        """
        return subscribe_on(
            self.app.router,
            pubsub,
            topic,
            route=route,
            match=match,
            priority=priority,
            dead_letter_topic=dead_letter_topic,
            metadata=metadata,
            raw_payload=raw_payload,
            bulk=bulk,
        )

    def subscriptions(self) -> list[TopicSubscription]:
        """Every subscription of the app, one per pubsub and topic, checked."""
        return merge_subscriptions(collect_handlers(self.app.routes))

    async def _subscribe_endpoint(self, request: Request) -> Response:
        refused = token_error(request)
        if refused is not None:
            return refused
        return JSONResponse([sub.to_wire() for sub in self.subscriptions()])

    def _wrap_lifespan(self) -> None:
        router = self.app.router
        inner = router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            self.subscriptions()  # raises SubscriptionError before serving anything
            async with inner(app) as state:
                yield state

        router.lifespan_context = lifespan
