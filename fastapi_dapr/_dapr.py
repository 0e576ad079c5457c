"""`Dapr`: one per app, the entry point that ties the app to Dapr."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._backend import Backend, Settings
from ._call import prepare_call
from ._exceptions import DaprAPIError
from ._handler import token_error
from ._invocation import InvocationSettings, InvokeResponse
from ._retry import RetryPolicy
from ._routing import collect_handlers, subscribe_on
from ._subscription import BulkSubscribe, TopicSubscription, merge_subscriptions

if TYPE_CHECKING:
    from ._publishing import FailedEntry
    from .sidecar.api import SidecarAPI
    from .sidecar.metrics import Metrics

__all__ = ["Dapr"]

F = TypeVar("F", bound=Callable[..., Any])
Mode = Literal["embedded", "remote"]


class Dapr:
    """Dapr's programming model on a FastAPI app.

    `Dapr(app)` adds `GET /dapr/subscribe`, which lists every subscription of
    the app, from `Dapr.subscribe` and from every included `DaprRouter`, and
    checks them when the app starts, so that a duplicate or conflicting
    subscription stops the app instead of never being reached.

    Modes:

    - `"embedded"` (the default): the app is its own sidecar. Dapr's HTTP API
      is served on the app's port at daprd's paths (`/v1.0/publish/...`), the
      pub/sub components of `resources_path` run in the process (with none, an
      in-memory component named `pubsub`), and messages are delivered to the
      app's subscriptions in process.
    - `"remote"`: the app runs under a real daprd (chosen automatically when
      `DAPR_HTTP_PORT` is set, as `dapr run` sets it). Nothing of the sidecar
      side starts; `publish()` posts to daprd.

    `app_id` defaults to `APP_ID` (set by `dapr run`). `app_api_token`
    (default `APP_API_TOKEN`) is what deliveries must carry in
    `dapr-api-token`. `api_token` (default `DAPR_API_TOKEN`) protects the
    embedded sidecar's API; without it the API answers only local clients.
    `retry` is the delivery retry policy used where no Resiliency applies.
    `serve_api=False` leaves the sidecar API unmounted: mount `dapr.sidecar`
    where you want it. `max_body_size` limits request bodies of the API
    (daprd's `--max-body-size`, 4 MiB), `max_header_size` their headers (431
    beyond), `max_bulk_entries` the entries of one bulk publish (10,000; 400
    beyond). `invocation` says which other apps
    and which URLs service invocation may reach (`InvocationSettings`).
    `metrics=True` (embedded mode) counts publishes, deliveries, retries, dead
    letters and invocations, and serves them in Prometheus's text format at
    `GET /metrics` on the app's port, protected as the rest of the sidecar API
    is (docs/observability.md).
    `grpc_port` (embedded mode, the `[grpc]` extra) also serves Dapr's gRPC API,
    the official SDKs' `DaprClient`, on 127.0.0.1 at that port with the app's
    lifespan (0: any free port, then `Dapr.grpc_port` tells it); None serves none
    (docs/grpc.md).
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        app_id: str | None = None,
        app_api_token: str | None = None,
        resources_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        mode: Mode | None = None,
        dapr_http_endpoint: str | None = None,
        api_token: str | None = None,
        retry: RetryPolicy | None = None,
        serve_api: bool = True,
        max_body_size: int = 4 * 1024 * 1024,
        max_header_size: int = 16 * 1024,
        max_bulk_entries: int = 10_000,
        invocation: InvocationSettings | None = None,
        metrics: bool = False,
        grpc_port: int | None = None,
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
        if mode is None:
            mode = "remote" if os.environ.get("DAPR_HTTP_PORT") else "embedded"
        if mode not in ("embedded", "remote"):
            raise ValueError(f"mode must be 'embedded' or 'remote', not {mode!r}")
        self.mode: Mode = mode
        if resources_path is None:
            self.resources_paths: list[str | os.PathLike[str]] = []
        elif isinstance(resources_path, (str, os.PathLike)):
            self.resources_paths = [resources_path]
        else:
            self.resources_paths = list(resources_path)
        self.retry = retry
        self.invocation = invocation or InvocationSettings()
        api_token = api_token if api_token is not None else os.environ.get("DAPR_API_TOKEN")
        # The mode's backend: everything below that differs between the modes is its.
        # Internal, not public API (fastapi_dapr.testing uses the embedded one).
        self.backend: Backend
        if grpc_port is not None and mode != "embedded":
            raise ValueError(
                "grpc_port is the embedded sidecar's: under daprd (remote mode), daprd serves gRPC "
                "on DAPR_GRPC_PORT"
            )
        if mode == "embedded":
            from .sidecar.embedded import EmbeddedBackend  # the app side's one way into the sidecar side

            self.backend = EmbeddedBackend(
                app,
                app_id=self.app_id,
                invocation=self.invocation,
                api_token=api_token,
                serve_api=serve_api,
                max_body_size=max_body_size,
                max_header_size=max_header_size,
                max_bulk_entries=max_bulk_entries,
                metrics=metrics,
                grpc_port=grpc_port,
            )
        else:
            from ._remote import RemoteBackend

            port = os.environ.get("DAPR_HTTP_PORT", "3500")
            self.dapr_http_endpoint = (
                dapr_http_endpoint or os.environ.get("DAPR_HTTP_ENDPOINT") or f"http://127.0.0.1:{port}"
            )
            self.backend = RemoteBackend(self.dapr_http_endpoint, api_token=api_token)
        self.sidecar: SidecarAPI | None = self.backend.sidecar
        self.metrics: Metrics | None = self.backend.metrics
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
        return f"Dapr(app_id={self.app_id!r}, mode={self.mode!r})"

    @property
    def grpc_port(self) -> int | None:
        """The port the embedded sidecar's gRPC API listens on while the app runs (the one
        `grpc_port=0` picked); None when it serves none or has not started."""
        return self.backend.grpc_port

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

    async def publish(
        self,
        pubsub: str,
        topic: str,
        data: Any,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Publish `data` to `topic` on `pubsub`, as `POST /v1.0/publish` does.

        `bytes` are sent as they are (`application/octet-stream` unless
        `content_type` says otherwise), `str` as `text/plain`, and anything else
        as JSON (pydantic models included). `metadata` are the `metadata.*`
        parameters of the HTTP API: `rawPayload`, `ttlInSeconds`,
        `cloudevent.*` overrides, or anything the subscriber should get as a
        header (so each key an HTTP token, each value without CR, LF or another
        control character). Raises `DaprAPIError` with daprd's status and error code.
        """
        await self.backend.publish(pubsub, topic, data, content_type, metadata)

    async def publish_bulk(
        self,
        pubsub: str,
        topic: str,
        entries: Iterable[Any],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> list[FailedEntry]:
        """Publish many messages to `topic` in one call, as
        `POST /v1.0-alpha1/publish/bulk` does (reference 1.8).

        Each entry is a `BulkPublishEntry`, or the data itself (encoded as
        `publish()` encodes it, its entry id its position). `metadata` is the
        request's `metadata.*`. Returns the entries that were not published (none:
        every one was); raises `DaprAPIError` when the request as a whole is
        refused (no such pubsub, a forbidden topic, a malformed entry, metadata that
        cannot be a header; in embedded mode, more than `max_bulk_entries` entries).
        """
        return await self.backend.publish_bulk(pubsub, topic, entries, metadata)

    async def invoke(
        self,
        target: str,
        method: str,
        *,
        http_method: str = "GET",
        json: Any = None,
        content: bytes | str | AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> InvokeResponse:
        """Invoke `method` on `target`, as `/v1.0/invoke/{target}/method/{method}` does.

        `target` is an HTTPEndpoint resource's name, an http(s) URL allowed by
        `InvocationSettings`, this app's id (served in process) or another app's
        id (`InvocationSettings.apps`; in remote mode, daprd resolves it). The
        answer is returned whatever its status, headers included, with the
        body read; with `stream=True` the body is left to `aiter_bytes()` and
        the response must be closed (`async with`); a body cut short then raises
        `OSError` from `aiter_bytes()`. `content` may be an async iterable of
        bytes, sent as it comes. Raises `DaprAPIError` when the target can't be
        reached, its answer is not valid HTTP/1.1 or is cut short (daprd's
        `ERR_DIRECT_INVOKE`), or is refused; `ValueError` for a header that
        cannot be sent.
        """
        call = prepare_call(
            target,
            method,
            http_method=http_method,
            json=json,
            content=content,
            headers=headers,
            params=params,
            timeout=timeout,
        )
        response = await self.backend.invoke(target, call)
        if not stream:
            try:
                await response.aread()
            except OSError as exc:  # the answer broke off in the middle of its body
                raise DaprAPIError(
                    500,
                    "ERR_DIRECT_INVOKE",
                    f"failed to invoke, id: {target}, err: the answer was cut short: {exc}",
                ) from exc
        return response

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
            subscriptions = self.subscriptions()  # raises before serving anything
            settings = Settings(
                self.app_id, self.app_api_token, list(self.resources_paths), self.retry, self.invocation
            )
            async with self.backend.lifespan(inner(app), subscriptions, settings) as state:
                yield state

        router.lifespan_context = lifespan
