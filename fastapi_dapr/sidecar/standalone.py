"""The standalone sidecar: Dapr's HTTP API on a port of its own, for an app in another process.

`fastapi-dapr sidecar --app-id ID --app-port PORT ...` runs it. The runtime is
the embedded sidecar's, given an `AppChannel` (an ASGI application that
forwards to the app's port) as its app: deliveries, self-invocation, publish,
secrets and metadata are the same code as in embedded mode.

Calls between this sidecar and the sidecars of other app ids are in `peers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from .._exceptions import DaprAPIError, ResourceError
from .._subscription import TopicSubscription
from .api import METRICS_PATH, SidecarAPI, is_local_client
from .api_call import route_path
from .app_channel import AppChannel, AppChannelError
from .delivery import Route
from .errors import direct_invoke_error, error_response
from .metadata_routes import METRICS_CONTENT_TYPE
from .metrics import Metrics
from .name_resolution import NameResolutionError, NameResolutionFile, Registration, new_token
from .peers import INTERNAL_PREFIX, find_peer, from_peer
from .proxy import Target
from .resources import Resources, load_resources
from .runtime import Runtime

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")


@dataclasses.dataclass(frozen=True)
class SidecarOptions:
    """What the command line says (`cli`), in Python's names."""

    app_id: str
    app_port: int | None = None
    app_channel_address: str = "127.0.0.1"
    dapr_http_port: int = 3500
    resources_paths: Sequence[str] = ()
    max_body_size: int = 4 * 1024 * 1024
    max_bulk_entries: int = 10_000
    api_token: str | None = None
    app_api_token: str | None = None
    name_resolution: str | None = None
    app_wait_timeout: float | None = None
    graceful_shutdown_seconds: float = 5.0
    log_level: str = "info"
    listen_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no metrics
    log_as_json: bool = False
    dapr_grpc_port: int | None = None  # None: no gRPC API
    app_protocol: str = "http"  # or "grpc": the app serves AppCallback


class _NoApp:
    """The app channel when there is no `--app-port`: every call fails as unreachable."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise AppChannelError("the sidecar was started without --app-port: there is no app to call")


class MetricsEndpoint:
    """`GET /metrics` on the metrics port: loopback only, and local clients only (no proxy,
    no browser page of another site), as the API without a token."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        response: Response
        if not is_local_client(scope, headers):
            response = JSONResponse(
                {"errorCode": "ERR_FORBIDDEN", "message": "the metrics port answers only local clients"},
                status_code=403,
            )
        elif route_path(scope) != METRICS_PATH:
            response = PlainTextResponse("404 page not found\n", status_code=404)
        elif scope["method"] not in ("GET", "HEAD"):
            response = PlainTextResponse("method not allowed\n", status_code=405, headers={"allow": "GET"})
        else:
            response = Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)
        await response(scope, receive, send)


class StandaloneRuntime(Runtime):
    """The runtime, with app ids resolved through the name-resolution file."""

    def __init__(
        self,
        *,
        names: NameResolutionFile | None,
        channel: AppChannel | None,
        stop: Callable[[], None],
        **options: Any,
    ) -> None:
        super().__init__(app=channel if channel is not None else _NoApp(), **options)
        self.names = names
        self.channel = channel
        self._stop = stop

    def shutdown(self) -> Callable[[], None]:
        """`POST /v1.0/shutdown`: the sidecar stops as on SIGTERM, gracefully."""

        def stop() -> None:
            logger.info("app id %s: shutdown requested through the API: stopping", self.app_id)
            self._stop()

        return stop

    async def find_target(self, name: str) -> Target:
        target = self.upstreams().resolve(name)  # an HTTPEndpoint, an allowed URL
        if target is not None:
            return target
        where = "no --name-resolution file is given"
        if self.names is not None:
            target = await find_peer(self.names, name, self.namespace)
            if target is not None:
                return target
            where = f"no running sidecar registered it in {self.names.path}"
        raise DaprAPIError(
            500,
            "ERR_DIRECT_INVOKE",
            f"failed to invoke, id: {name}, err: couldn't find service: {name} (not this app's id "
            f"{self.app_id!r}, not an HTTPEndpoint resource, and {where})",
        )

    def plan_routes(self, programmatic: Sequence[TopicSubscription]) -> list[Route]:
        routes = super().plan_routes(programmatic)
        plan = getattr(self.channel, "delivery_routes", None)  # the gRPC channel's delivery paths
        return plan(routes) if plan is not None else routes

    def metadata(self, *, channel_port: int | None = None) -> dict[str, Any]:
        body = super().metadata(channel_port=self.channel.port if self.channel is not None else None)
        connection = body["appConnectionProperties"]
        connection["channelAddress"] = self.channel.host if self.channel is not None else ""
        connection["protocol"] = getattr(self.channel, "protocol", "http")
        app_path = getattr(self.channel, "app_path", None)
        if app_path is not None:  # the paths the app gave, not the gRPC channel's own
            for subscription in body["subscriptions"]:
                for rule in subscription["rules"]:
                    rule["path"] = app_path(rule["path"])
        body["extended"]["runtime"] = "fastapi-dapr standalone"
        return body


class _Server:
    """uvicorn's server without its signal handling: the sidecar handles SIGTERM and SIGINT."""

    def __init__(self, app: Any, *, log_level: str, grace: float, max_header_size: int) -> None:
        try:
            import uvicorn
        except ImportError:  # pragma: no cover - an install without the `server` extra
            raise SystemExit(
                "fastapi-dapr sidecar needs uvicorn: pip install 'fastapi-dapr[server]'"
            ) from None

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="debug" if log_level == "debug" else "warning",
            access_log=log_level == "debug",
            timeout_graceful_shutdown=max(1, round(grace)),
            h11_max_incomplete_event_size=max_header_size,
        )
        self.server = Server(config)

    async def serve(self, sock: socket.socket) -> None:
        await self.server.serve(sockets=[sock])

    def stop(self, *, force: bool = False) -> None:
        self.server.should_exit = True
        if force:
            self.server.force_exit = True


class StandaloneSidecar:
    """One sidecar process: the front ASGI application and its life cycle (`run`)."""

    def __init__(self, options: SidecarOptions) -> None:
        self.options = options
        self.runtime: StandaloneRuntime | None = None
        self.registration: Registration | None = None  # set once the file lists this sidecar
        self._token: str | None = None  # taken from other sidecars until serving has ended
        self.names = NameResolutionFile(options.name_resolution) if options.name_resolution else None
        self.channel: Any = None  # AppChannel, or GrpcAppChannel for --app-protocol grpc
        if options.app_port and options.app_protocol == "grpc":
            from .grpc_api.app_channel import GrpcAppChannel

            self.channel = GrpcAppChannel(
                options.app_channel_address, options.app_port, max_body_size=options.max_body_size
            )
        elif options.app_port:
            self.channel = AppChannel(options.app_channel_address, options.app_port)
        self.api = SidecarAPI(
            lambda: self.runtime,
            api_token=options.api_token,
            max_body_size=options.max_body_size,
            max_bulk_entries=options.max_bulk_entries,
        )
        self.metrics = Metrics(options.app_id) if options.metrics_port is not None else None
        self.api.metrics = self.metrics  # the gRPC API's counts; GET /metrics stays on its own port
        self.port = 0
        self.metrics_port = 0
        self.grpc_port = 0
        self._grpc: Any = None  # the GrpcServer, while it serves
        self._metrics_server: _Server | None = None
        self._stop = asyncio.Event()
        self._signals = 0
        self._server: _Server | None = None

    # -- the front door --------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope).startswith(INTERNAL_PREFIX):
            await self._guarded(self._from_sidecar, scope, receive, send)
            return
        await self._guarded(self.api, scope, receive, send)

    async def _guarded(self, app: Any, scope: Scope, receive: Receive, send: Send) -> None:
        """Run `app`; when the app process can't be reached, daprd's 500 `ERR_DIRECT_INVOKE`."""
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except AppChannelError as exc:
            if started:  # too late for an error answer: the caller sees the answer cut short
                logger.warning("invocation of %s: %s", self.options.app_id, exc)
                return
            error = direct_invoke_error(
                exc.status, f"failed to invoke, id: {self.options.app_id}, err: {exc}"
            )
            await error_response(error)(scope, receive, send)

    async def _from_sidecar(self, scope: Scope, receive: Receive, send: Send) -> None:
        await from_peer(self.runtime, self._token, self.api.max_body_size, scope, receive, send)

    # -- the life cycle --------------------------------------------------------

    def _on_signal(self, number: int) -> None:
        self._signals += 1
        logger.info("%s received: stopping", signal.Signals(number).name)
        self._stop.set()
        if self._signals > 1 and self._server is not None:
            self._server.stop(force=True)  # a second signal: stop waiting for in-flight calls

    def _handle_signals(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """SIGTERM and SIGINT stop the sidecar; the function returned puts back what was there.

        Windows' event loops have no signal handlers: there a plain handler passes the signal
        to the loop."""
        previous: dict[int, Any] = {}
        for number in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(number, self._on_signal, number)
            except NotImplementedError:
                previous[number] = signal.signal(
                    number, lambda caught, _: loop.call_soon_threadsafe(self._on_signal, caught)
                )

        def restore() -> None:
            for number in (signal.SIGTERM, signal.SIGINT):
                if number in previous:
                    signal.signal(number, previous[number])
                else:
                    loop.remove_signal_handler(number)

        return restore

    def _listen(self, port: int, flag: str) -> socket.socket:
        # TCP by name, not protocol 0: asyncio sets TCP_NODELAY only on sockets whose proto
        # says TCP, and without it an answer's body waits ~40 ms for the delayed ACK of its head.
        family = socket.AF_INET6 if ":" in self.options.listen_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.options.listen_host, port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise ResourceError(
                f"cannot listen on {self.options.listen_host}:{port}: {exc.strerror or exc} ({flag})"
            ) from None
        sock.setblocking(False)
        return sock

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the process's exit status."""
        restore_signals = self._handle_signals(asyncio.get_running_loop())
        sock: socket.socket | None = None
        metrics_sock: socket.socket | None = None
        status = 0
        try:
            sock = self._listen(self.options.dapr_http_port, "--dapr-http-port")
            self.port = sock.getsockname()[1]
            if self.options.metrics_port is not None:
                metrics_sock = self._listen(self.options.metrics_port, "--metrics-port")
                self.metrics_port = metrics_sock.getsockname()[1]
            status = await self._serve(sock, metrics_sock)
        except (ResourceError, NameResolutionError) as exc:
            logger.error("%s", exc)
            status = 1
        finally:
            restore_signals()
            for opened in (sock, metrics_sock):
                if opened is not None:
                    opened.close()
        return status

    async def _serve(self, sock: socket.socket, metrics_sock: socket.socket | None) -> int:
        options = self.options
        resources = (
            load_resources(options.resources_paths, app_id=options.app_id)
            if options.resources_paths
            else Resources()
        )
        runtime = StandaloneRuntime(
            names=self.names,
            channel=self.channel,
            stop=self._stop.set,
            app_id=options.app_id,
            app_api_token=options.app_api_token,
            resources=resources,
            shutdown_grace=options.graceful_shutdown_seconds,
            metrics=self.metrics,
        )
        status = 0
        metrics_serving: asyncio.Future[None] | None = None
        try:
            await runtime.start_components()  # publishing works from here on
            self.runtime = runtime
            if self.names is not None:
                self._token = new_token()
                registration = Registration(
                    options.app_id,
                    options.listen_host,
                    self.port,
                    os.getpid(),
                    self._token,
                    runtime.namespace,
                )
                try:
                    await asyncio.to_thread(self.names.register, registration, stop=self._stop.is_set)
                except NameResolutionError:
                    if not self._stop.is_set():
                        raise
                    logger.info("app id %s: stopped before it was registered", options.app_id)
                    return 0
                self.registration = registration
            self._server = _Server(
                self,
                log_level=options.log_level,
                grace=options.graceful_shutdown_seconds,
                max_header_size=self.api.max_header_size,
            )
            grpc_line = await self._start_grpc()
            serving = asyncio.ensure_future(self._server.serve(sock))
            logger.info(
                "app id %s: Dapr API listening on http://%s:%d%s",
                options.app_id,
                options.listen_host,
                self.port,
                grpc_line,
            )
            if metrics_sock is not None and self.metrics is not None:
                self._metrics_server = _Server(
                    MetricsEndpoint(self.metrics), log_level=options.log_level, grace=1, max_header_size=16384
                )
                metrics_serving = asyncio.ensure_future(self._metrics_server.serve(metrics_sock))
                logger.info(
                    "app id %s: metrics listening on http://%s:%d%s",
                    options.app_id,
                    options.listen_host,
                    self.metrics_port,
                    METRICS_PATH,
                )
            connecting = asyncio.ensure_future(self._connect_app(runtime))
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                pending: set[asyncio.Future[Any]] = {serving, connecting, stopping}
                while True:
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    if connecting in done and not connecting.cancelled() and connecting.exception():
                        problem = connecting.exception()
                        if isinstance(problem, AppChannelError):
                            logger.error("%s", problem)
                        else:
                            logger.error("connecting to the app failed", exc_info=problem)
                        status = 1
                        break
                    if serving in done or stopping in done:
                        break
                    pending = {serving, stopping}
            finally:
                stopping.cancel()
                await self._deregister()
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await connecting
                self._server.stop()
                # In-flight API calls and in-flight deliveries finish within the grace, together.
                await asyncio.gather(serving, runtime.stop_subscriptions(), self._stop_grpc())
                if self._metrics_server is not None and metrics_serving is not None:
                    self._metrics_server.stop()  # scrapes go on until the rest has stopped
                    await metrics_serving
        finally:
            await self._deregister()
            self._token = None  # serving has ended: no call can be in flight any more
            self.runtime = None
            await runtime.close()
            if self.channel is not None:
                await self.channel.close()
        logger.info("app id %s: stopped", options.app_id)
        return status

    async def _start_grpc(self) -> str:
        """Serve the gRPC API when asked (`--dapr-grpc-port`); what the ready line says of it."""
        if self.options.dapr_grpc_port is None:
            return ""
        from .grpc_api.server import GrpcServer

        server = GrpcServer(self.api, host=self.options.listen_host)
        try:
            self.grpc_port = await server.start(self.options.dapr_grpc_port)
        except OSError as exc:
            raise ResourceError(f"{exc} (--dapr-grpc-port)") from None
        self._grpc = server
        host = self.options.listen_host
        return f", gRPC API on {f'[{host}]' if ':' in host else host}:{self.grpc_port}"

    async def _stop_grpc(self) -> None:
        server, self._grpc = self._grpc, None
        if server is not None:
            await server.stop(self.options.graceful_shutdown_seconds)

    async def _deregister(self) -> None:
        registration, self.registration = self.registration, None
        if registration is not None and self.names is not None:
            try:
                await asyncio.to_thread(self.names.deregister, registration)
            except (OSError, NameResolutionError) as exc:
                logger.error(
                    "could not remove app id %s from %s: %s", registration.app_id, self.names.path, exc
                )

    async def _connect_app(self, runtime: StandaloneRuntime) -> None:
        """Wait for the app, read its subscriptions, start deliveries (raises `AppChannelError`)."""
        from .._exceptions import SubscriptionError

        if self.channel is None:
            runtime.subscriptions_started()  # no app: no subscriptions, as daprd without an app channel
            logger.info("app id %s: ready: no app (no --app-port), no subscriptions", runtime.app_id)
            return
        await self.channel.wait_until_listening(self.options.app_wait_timeout)
        try:
            programmatic = await self.channel.subscriptions(runtime.app_id, runtime.app_api_token)
        except SubscriptionError as exc:
            # daprd logs it and goes on without the app's own subscriptions (reference 2.1).
            logger.error("%s: no programmatic subscriptions", exc)
            programmatic = []
        except AppChannelError as exc:
            # Still unreachable after the retries: daprd logs it and goes on serving the API
            # and invocations. The declarative subscriptions start (daprd starts none).
            logger.warning("%s: no programmatic subscriptions", exc)
            programmatic = []
        await runtime.start_subscriptions(programmatic)
        logger.info(
            "app id %s: ready: app at %s, %d subscriptions",
            runtime.app_id,
            self.channel.address,
            len(runtime.routes),
        )
