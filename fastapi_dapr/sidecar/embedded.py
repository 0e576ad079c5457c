"""`EmbeddedBackend`: `Dapr` as the app's own sidecar (embedded mode).

The one module of the sidecar side that the app side loads (lazily, from `Dapr`, and
only in embedded mode). It owns the sidecar's HTTP API, its metrics and, while the
app's lifespan runs, the `Runtime`. It is given `Dapr`'s settings, never `Dapr`.

Besides `Backend`'s methods, `fastapi_dapr.testing` uses `clock`, `memory_pubsub` and
`publish_observers` (set before the app starts), `running()` (its routes and workers, to
say what is in progress when a wait times out), `add_observer` and the message id
`publish` returns: that is the whole of its surface outside `Dapr`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from .._backend import Backend
from .._exceptions import DaprAPIError, DaprError
from .._headers import forwardable, invocation_headers
from .._invocation import InvocationSettings, InvokeResponse
from .._publishing import FailedEntry, bulk_body, encode_data, failed_entries
from .._trace import CURRENT, header_pairs
from .api import SidecarAPI, SidecarDispatch
from .asgi import http_scope
from .calls import open_in_process
from .envelope import PublishRequest

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.types import ASGIApp

    from .._backend import Settings
    from .._call import Call
    from .._retry import Clock
    from .._subscription import TopicSubscription
    from .delivery import DeliveryReport
    from .metrics import Metrics
    from .publisher import Sent
    from .runtime import Runtime

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


def serve_in_front(app: Starlette, api: SidecarAPI) -> None:
    """Serve `api` in front of `app`'s whole middleware stack (`SidecarDispatch`).

    Starlette builds an app's stack once, at its first ASGI call, with
    `build_middleware_stack()`, `ServerErrorMiddleware` outermost; middleware added
    after `Dapr(app)` goes inside it. Wrapping what that method builds is the one
    place outside the whole stack, which keeps the app's own middleware off daprd's
    paths whenever the app adds it. Before the stack is built only.
    """
    if app.middleware_stack is not None:
        raise RuntimeError("Dapr(app) must be created before the app starts serving")
    build = app.build_middleware_stack

    def build_with_sidecar() -> ASGIApp:
        return SidecarDispatch(api, build())

    app.build_middleware_stack = build_with_sidecar  # type: ignore[method-assign]


class EmbeddedBackend(Backend):
    """The embedded sidecar of `app`: its API served on the app's port (unless
    `serve_api=False`), its runtime started and stopped with the app's lifespan."""

    def __init__(
        self,
        app: FastAPI,
        *,
        app_id: str,
        invocation: InvocationSettings,
        api_token: str | None,
        serve_api: bool,
        max_body_size: int,
        max_header_size: int,
        max_bulk_entries: int,
        metrics: bool,
        grpc_port: int | None = None,
        chosen_by: str = "mode='embedded'",
    ) -> None:
        from .url_policy import UrlPolicy

        if grpc_port is not None:
            if isinstance(grpc_port, bool) or not isinstance(grpc_port, int) or not 0 <= grpc_port <= 65535:
                raise ValueError(
                    f"grpc_port must be a port number (0 to 65535, 0: any free port), not {grpc_port!r}"
                )
            from .grpc_api import require

            require("Dapr(app, grpc_port=...)")
        self._grpc_listen = grpc_port
        self.chosen_by = chosen_by  # what chose embedded mode, for the start-up line
        self.serve_api = serve_api

        # A bad entry is a mistake to see now, not at the first invocation.
        UrlPolicy(invocation.allowed_urls, invocation.allow_private_addresses)
        self.app = app
        self.clock: Clock | None = None  # the runtime's clock (FakeClock in tests): set before start
        # Tests' settings, set before start: the pub/sub components run on the in-memory broker
        # (True: all, or those named), and who sees each message a broker takes.
        self.memory_pubsub: bool | frozenset[str] = False
        self.publish_observers: list[Callable[[Sent], None]] = []
        self._runtime: Runtime | None = None
        metrics_: Metrics | None = None
        if metrics:
            from .metrics import Metrics

            metrics_ = Metrics(app_id)
        self.metrics = metrics_
        self.sidecar: SidecarAPI = SidecarAPI(
            lambda: self._runtime,
            api_token=api_token,
            max_body_size=max_body_size,
            max_header_size=max_header_size,
            metrics=metrics_,
            max_bulk_entries=max_bulk_entries,
        )
        if serve_api:
            serve_in_front(app, self.sidecar)

    def running(self) -> Runtime:
        """The runtime; daprd's "not started" error outside the app's lifespan."""
        if self._runtime is None:
            raise DaprAPIError(
                503,
                "ERR_SIDECAR_NOT_STARTED",
                "the embedded sidecar runs inside the app's lifespan and has not started "
                "(in tests: `with TestClient(app)`, or fastapi_dapr.testing)",
            )
        return self._runtime

    def add_observer(self, observer: Callable[[DeliveryReport], None]) -> Callable[[], None]:
        """Call `observer` with every final delivery report of the running runtime (it ends
        with the runtime); returns the function that removes it."""
        return self.running().add_observer(observer)

    async def close(self) -> None:
        return None  # the runtime ends with the app's lifespan; nothing outlives it

    # -- the app's lifespan ----------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(
        self,
        app_lifespan: AbstractAsyncContextManager[Any],
        subscriptions: list[TopicSubscription],
        settings: Settings,
    ) -> AsyncIterator[Any]:
        from .startup import refusal, shadowed_routes

        shadowed = shadowed_routes(self.app.routes, metrics=self.metrics is not None)
        if shadowed and self.serve_api:
            raise DaprError(refusal(shadowed))
        runtime = self._create_runtime(settings)
        try:
            await runtime.start_components()  # publishing works from here on
            self._runtime = runtime
            async with self._grpc_api(runtime), app_lifespan as state:
                runtime.lifespan_state = state
                try:
                    # Deliveries start once the app's own start-up is done.
                    await runtime.start_subscriptions(subscriptions)
                    self._say_started(runtime)
                    yield state
                finally:
                    await runtime.stop_subscriptions()
        finally:
            self._runtime = None
            await runtime.close()

    def _say_started(self, runtime: Runtime) -> None:
        from .startup import several_workers_warning, startup_line

        line = startup_line(
            runtime,
            chosen_by=self.chosen_by,
            serve_api=self.serve_api,
            metrics=self.metrics is not None,
            grpc_port=self.grpc_port,
        )
        logger.info("%s", line)
        warning = several_workers_warning(runtime)
        if warning is not None:
            logger.warning("%s", warning)

    @asynccontextmanager
    async def _grpc_api(self, runtime: Runtime) -> AsyncIterator[None]:
        """Dapr's gRPC API while the app runs, when `grpc_port` asks for it; it stops after
        the app's own shutdown, with the runtime's grace for in-flight calls."""
        if self._grpc_listen is None:
            yield
            return
        from .grpc_api.server import GrpcServer

        server = GrpcServer(self.sidecar)
        try:
            self.grpc_port = await server.start(self._grpc_listen)
        except OSError as exc:
            raise RuntimeError(f"Dapr(app, grpc_port={self._grpc_listen}): {exc}") from None
        try:
            yield
        finally:
            self.grpc_port = None
            await server.stop(runtime.shutdown_grace)

    def _create_runtime(self, settings: Settings) -> Runtime:
        from .resources import Resources, load_resources
        from .runtime import Runtime

        paths = settings.resources_paths
        resources = load_resources(paths, app_id=settings.app_id) if paths else Resources()
        if self.memory_pubsub:
            from .pubsub_swap import in_memory

            names = None if self.memory_pubsub is True else self.memory_pubsub
            resources = in_memory(resources, names)
        runtime = Runtime(
            app=self.app,
            app_id=settings.app_id,
            app_api_token=settings.app_api_token,
            resources=resources,
            retry=settings.retry,
            clock=self.clock,
            invocation=settings.invocation,
            metrics=self.metrics,
        )
        runtime.publisher.observers = self.publish_observers  # shared: what is added later is seen
        return runtime

    # -- publishing ------------------------------------------------------------------------------

    async def publish(
        self,
        pubsub: str,
        topic: str,
        data: Any,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
    ) -> str:
        """Publish to the embedded sidecar; the broker's message id."""
        body, media_type, value = encode_data(data, content_type)
        traceparent, tracestate = CURRENT.get() or ("", "")
        request = PublishRequest(
            pubsub,
            topic,
            body,
            media_type,
            dict(metadata) if metadata else {},
            traceparent,
            tracestate,
            value=value,
        )
        return await self.running().publish(request)

    async def publish_bulk(
        self, pubsub: str, topic: str, entries: Iterable[Any], metadata: Mapping[str, str] | None
    ) -> list[FailedEntry]:
        from .bulk_publish import publish_bulk

        body = bulk_body(entries)
        runtime = self.running()
        runtime.check_pubsub(pubsub, topic, metadata or {})  # as the HTTP API, before the entries
        traceparent, tracestate = CURRENT.get() or ("", "")
        failed = await publish_bulk(
            runtime,
            pubsub,
            topic,
            body,
            dict(metadata or {}),
            traceparent,
            tracestate,
            max_entries=self.sidecar.max_bulk_entries,
        )
        return failed_entries(failed)

    # -- invocation ------------------------------------------------------------------------------

    async def invoke(self, target: str, call: Call) -> InvokeResponse:
        """As `/v1.0/invoke` resolves and checks targets, with the same connection pools; this
        app's own id served in process."""
        runtime = self.running()
        from .invocation_policy import built_in_retry, invocation_policy, run_invocation

        opener: Callable[[], Awaitable[InvokeResponse]]
        if runtime.is_own_id(target):
            target = runtime.app_id  # `{id}.{namespace}` too: the policies name the app id
            policy = invocation_policy(runtime, None, target, call.method)

            def opener() -> Awaitable[InvokeResponse]:
                return self._invoke_self(call)

        else:
            found = await runtime.find_target(target)
            policy = invocation_policy(runtime, found, target, call.method)
            connect_retry = built_in_retry(runtime, found)
            headers = invocation_headers(
                call.headers, target=found, identity=(runtime.app_id, runtime.namespace), trace=call.trace
            )

            async def opener() -> InvokeResponse:
                upstream = await runtime.upstreams().open(
                    found,
                    call.method,
                    call.verb,
                    call.query,
                    headers,
                    call.body,
                    length=call.declared,
                    timeout=call.timeout,
                    connect_retry=connect_retry,
                    clock=runtime.clock,
                )

                async def close() -> None:
                    upstream.release()

                return InvokeResponse(upstream.status, upstream.headers, upstream.chunks(), close)

        if policy.is_empty:
            return await opener()
        return await run_invocation(runtime, policy, target, opener, replayable=not call.streamed)

    def _invoke_self(self, call: Call) -> Awaitable[InvokeResponse]:
        """This app's own route, in process, streaming both ways as the HTTP API does."""
        runtime = self.running()  # each attempt: the app may have stopped meanwhile
        headers = [*forwardable(call.headers), *header_pairs(call.trace)]
        length = len(call.body) if isinstance(call.body, bytes) else call.declared
        if length is not None:
            headers.append(("content-length", str(length)))
        scope = http_scope(
            call.verb,
            "/" + call.method,
            [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
            query_string=call.query.encode(),
            state=runtime.lifespan_state,
        )
        return open_in_process(
            runtime,
            scope,
            call.body,
            call.timeout,
            method=call.method,
            via_header=False,
            api_token_configured=False,
            max_body_size=self.sidecar.max_body_size,
        )
