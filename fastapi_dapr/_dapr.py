"""`Dapr`: one per app, the entry point that ties the app to Dapr."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ._asyncapi import build_document, check_asyncapi_url
from ._backend import Backend, Settings
from ._call import prepare_call
from ._exceptions import DaprAPIError
from ._handler import token_error
from ._invocation import InvocationSettings, InvokeResponse
from ._logs import install_default_handler
from ._publisher import Publisher, check_schema
from ._retry import RetryPolicy
from ._routing import collect_handlers, subscribe_on
from ._subscription import BulkSubscribe, TopicSubscription, merge_subscriptions

if TYPE_CHECKING:
    from ._publishing import FailedEntry
    from .sidecar.api import SidecarAPI
    from .sidecar.metrics import Metrics

__all__ = ["Dapr"]

logger = logging.getLogger("fastapi_dapr")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
Mode = Literal["embedded", "remote"]


class Dapr:
    """Dapr's programming model on a FastAPI app: one per app.

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

    Args:
        app: The app; a second `Dapr` on the same app is refused.
        app_id: The app's id; default `APP_ID` (set by `dapr run`), else `"app"`.
        app_api_token: What deliveries must carry in `dapr-api-token`; default
            `APP_API_TOKEN`.
        resources_path: The folders (or one folder) of Dapr resources read at
            start-up in embedded mode, as daprd's `--resources-path`.
        mode: `"embedded"` or `"remote"`; default remote when `DAPR_HTTP_PORT`
            is set.
        dapr_http_endpoint: daprd's address in remote mode; default
            `DAPR_HTTP_ENDPOINT`, else `http://127.0.0.1:$DAPR_HTTP_PORT`.
        api_token: What callers of the embedded sidecar's API must send in
            `dapr-api-token`; default `DAPR_API_TOKEN`. Without one the API
            answers only local clients.
        retry: The delivery retry policy where no Resiliency policy applies.
        serve_api: False leaves the sidecar API unmounted: mount `dapr.sidecar`
            where you want it.
        max_body_size: The largest request body the API takes (daprd's
            `--max-body-size`, 4 MiB; 413 beyond).
        max_header_size: The largest request head the API takes (431 beyond).
        max_bulk_entries: The most entries of one bulk publish (10,000; 400
            beyond).
        invocation: Which other apps and which URLs service invocation may
            reach.
        metrics: In embedded mode, count publishes, deliveries, retries, dead
            letters and invocations, and serve them in Prometheus's text format
            at `GET /metrics` on the app's port, protected as the rest of the
            sidecar API is (see Observability).
        grpc_port: In embedded mode with the `[grpc]` extra, also serve Dapr's
            gRPC API (the official SDKs' `DaprClient`) on 127.0.0.1 at this port
            while the app runs; 0 picks a free port (then `Dapr.grpc_port` tells
            it), None serves none (see gRPC and the official SDKs).
        asyncapi_url: Where the app serves the AsyncAPI 3.0 document of its
            events (`Dapr.asyncapi()`), left out of its OpenAPI schema; None
            serves none (see The app's events: AsyncAPI).
        asyncapi_docs_url: Where the app serves the page that shows that
            document; None serves none.
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
        asyncapi_url: str | None = "/asyncapi.json",
        asyncapi_docs_url: str | None = "/asyncapi",
    ) -> None:
        existing = getattr(app.state, "fastapi_dapr", None)
        if existing is not None:
            raise RuntimeError(
                f"this app already has {existing!r}; a second Dapr instance would shadow "
                "the first one's subscriptions: create one per app and share it"
            )
        self.app = app
        """The app."""
        self.app_id: str = app_id or os.environ.get("APP_ID") or "app"
        """The app's id."""
        self.app_api_token: str | None = (
            app_api_token if app_api_token is not None else os.environ.get("APP_API_TOKEN")
        ) or None
        """What deliveries must carry in `dapr-api-token`; None: nothing."""
        # What chose the mode, said in the start-up line.
        self._chosen_by = f"mode={mode!r}"
        if mode is None:
            port_set = os.environ.get("DAPR_HTTP_PORT")
            mode = "remote" if port_set else "embedded"
            self._chosen_by = f"DAPR_HTTP_PORT={port_set}" if port_set else "DAPR_HTTP_PORT is not set"
        if mode not in ("embedded", "remote"):
            raise ValueError(f"mode must be 'embedded' or 'remote', not {mode!r}")
        self.mode: Mode = mode
        """`"embedded"` or `"remote"`."""
        if resources_path is None:
            self.resources_paths: list[str | os.PathLike[str]] = []
            """The folders of resources read at start-up (embedded mode)."""
        elif isinstance(resources_path, (str, os.PathLike)):
            self.resources_paths = [resources_path]
        else:
            self.resources_paths = list(resources_path)
        self.retry = retry
        """The delivery retry policy where no Resiliency applies; None: the default one."""
        self.invocation = invocation or InvocationSettings()
        """Where service invocation may send requests."""
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
                chosen_by=self._chosen_by,
            )
        else:
            from ._remote import RemoteBackend

            port = os.environ.get("DAPR_HTTP_PORT", "3500")
            self.dapr_http_endpoint = (
                dapr_http_endpoint or os.environ.get("DAPR_HTTP_ENDPOINT") or f"http://127.0.0.1:{port}"
            )
            """daprd's address (remote mode only)."""
            self.backend = RemoteBackend(self.dapr_http_endpoint, api_token=api_token)
        self.sidecar: SidecarAPI | None = self.backend.sidecar
        """The embedded sidecar's API, an ASGI app to mount where you want it with
        `serve_api=False`; None in remote mode."""
        self.metrics: Metrics | None = self.backend.metrics
        """The counters `metrics=True` keeps (embedded mode); None otherwise."""
        app.state.fastapi_dapr = self
        app.add_api_route(
            "/dapr/subscribe",
            self._subscribe_endpoint,
            methods=["GET"],
            include_in_schema=False,
            name="dapr:subscribe",
        )
        self._publishers: list[Publisher[Any]] = []
        self._asyncapi_url = asyncapi_url
        for url, endpoint, name in (
            (asyncapi_url, self._asyncapi_endpoint, "dapr:asyncapi"),
            (asyncapi_docs_url, self._asyncapi_page, "dapr:asyncapi-page"),
        ):
            if url is not None:
                app.add_api_route(
                    check_asyncapi_url(url), endpoint, methods=["GET"], include_in_schema=False, name=name
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

    @overload
    def publisher(
        self,
        pubsub: str,
        topic: str,
        schema: type[T],
        *,
        description: str | None = None,
        raw_payload: bool = False,
    ) -> Publisher[T]: ...

    @overload
    def publisher(
        self,
        pubsub: str,
        topic: str,
        schema: Any,
        *,
        description: str | None = None,
        raw_payload: bool = False,
    ) -> Publisher[Any]: ...

    def publisher(
        self,
        pubsub: str,
        topic: str,
        schema: Any,
        *,
        description: str | None = None,
        raw_payload: bool = False,
    ) -> Publisher[Any]:
        """Declare that the app publishes `schema`'s data to `topic` on `pubsub`.

        Returns a `Publisher` whose `publish()` publishes there; the AsyncAPI document
        (`asyncapi()`) lists it as a send operation, its message's data `schema`'s JSON
        Schema (a pydantic model, or any type pydantic describes). `raw_payload=True`
        publishes the data without a CloudEvent around it (daprd's `rawPayload`).
        The same declaration twice returns the same publisher.
        """
        check_schema(pubsub, topic, schema)
        for known in self._publishers:
            if (known.pubsub, known.topic, known.schema, known.description, known.raw_payload) == (
                pubsub,
                topic,
                schema,
                description,
                raw_payload,
            ):
                return known
        declared: Publisher[Any] = Publisher(pubsub, topic, schema, description, raw_payload, self)
        self._publishers.append(declared)
        return declared

    def asyncapi(self) -> dict[str, Any]:
        """The AsyncAPI 3.0 document of the app's events: its subscriptions and the
        publishers it declared, with their pydantic types' JSON Schemas
        (see The app's events: AsyncAPI). The app's title and version are the document's."""
        return build_document(
            title=self.app.title,
            version=self.app.version,
            description=self.app.description or None,
            app_id=self.app_id,
            subscriptions=self.subscriptions(),
            publishers=list(self._publishers),
        )

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
        `POST /v1.0-alpha1/publish/bulk` does.

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

    async def _asyncapi_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.asyncapi())

    async def _asyncapi_page(self, request: Request) -> Response:
        from ._asyncapi_page import render_page

        url = self._asyncapi_url
        if url is not None:
            url = request.scope.get("root_path", "") + url
        return HTMLResponse(render_page(self.asyncapi(), url))

    def _wrap_lifespan(self) -> None:
        router = self.app.router
        inner = router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            install_default_handler()  # the package's lines show under uvicorn's default logging
            subscriptions = self.subscriptions()  # raises before serving anything
            settings = Settings(
                self.app_id, self.app_api_token, list(self.resources_paths), self.retry, self.invocation
            )
            async with self.backend.lifespan(inner(app), subscriptions, settings) as state:
                if self.mode == "remote":  # the embedded sidecar says what it runs itself
                    logger.info(
                        "remote mode (%s): app id %r under daprd at %s; nothing of the embedded sidecar runs",
                        *(self._chosen_by, self.app_id, self.dapr_http_endpoint),
                    )
                yield state

        router.lifespan_context = lifespan
