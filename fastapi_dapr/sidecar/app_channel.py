"""The app channel of the standalone sidecar: the app is another process, reached over HTTP.

`AppChannel` is an ASGI application that passes each request on to the app's
port and streams the answer back, on the proxy's HTTP/1.1 client (`pool`, `http1`).
The runtime is given it as its `app`, so deliveries, self-invocation and the
rest of the sidecar work unchanged whether the app is in process or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

from starlette.types import Receive, Scope, Send

from .._exceptions import SubscriptionError
from .._headers import declared_length, forwardable, response_headers
from .._subscription import TopicSubscription, parse_subscribe_answer
from .caller import CallerWatch, ClientGone, RequestBody
from .errors import describe
from .http1 import MalformedAnswer, RequestError, UpstreamError
from .pool import Pool

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

_WAIT_REPORT = 5.0  # seconds between two "still waiting for the app" log lines
_SUBSCRIBE_RETRIES = (0.5, 0.75, 1.0)  # daprd's DaprBuiltInInitializationRetries (reference 2.1)


class AppChannelError(Exception):
    """The app could not be reached, or broke the exchange before answering (`status`: 500),
    or the request cannot be sent as HTTP/1.1 (400)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class AppChannel:
    """Forwards ASGI requests to `http://{host}:{port}` (the app's own server)."""

    def __init__(self, host: str, port: int, *, pool_size: int = 100, connect_timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self._pool = Pool(
            "http", host, port, ssl_context=None, check=None, connect_timeout=connect_timeout, limit=pool_size
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
        target = raw_path.decode("latin-1")
        query: bytes = scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("latin-1")
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        headers = forwardable(raw)  # Dapr's headers stay: the runtime set them for the app
        first = await receive()
        if first["type"] == "http.disconnect":
            return
        body: bytes | AsyncIterator[bytes] | None = first.get("body", b"")
        length = None
        with CallerWatch(receive) as watch:
            if first.get("more_body", False):
                length = declared_length(raw)
                prefix = first.get("body", b"")
                body = RequestBody(receive, None, prefix=prefix, on_end=watch.start).__aiter__()
            else:
                watch.start()
                if not body and not any(name == b"content-length" for name, _ in raw):
                    body = None
            await self._forward(scope["method"], target, headers, body, length, send, watch)

    async def _forward(
        self,
        verb: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
        send: Send,
        watch: CallerWatch,
    ) -> None:
        try:
            response = await self._pool.request(verb, target, headers, body, length=length)
        except ClientGone:
            return
        except RequestError as exc:
            raise AppChannelError(f"the request cannot be sent to the app: {exc}", 400) from None
        except MalformedAnswer as exc:
            raise AppChannelError(f"the app at {self.address} answered: {exc}") from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise AppChannelError(f"the app at {self.address} could not be reached: {describe(exc)}") from exc
        watch.on_gone(response.abort)
        try:
            start_headers = response_headers(response.headers, response.status)
            await send({"type": "http.response.start", "status": response.status, "headers": start_headers})
            while True:
                try:
                    chunk, last = await response.next_chunk()
                except MalformedAnswer as exc:
                    raise AppChannelError(f"the app at {self.address} broke its answer: {exc}") from None
                except UpstreamError as exc:
                    raise AppChannelError(f"the app at {self.address} cut its answer short: {exc}") from exc
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                if last:
                    return
        finally:
            response.abort()  # nothing when the answer was read whole: the connection is reused

    async def close(self) -> None:
        self._pool.close()

    async def wait_until_listening(self, timeout: float | None) -> None:
        """Return once the app accepts connections on its port, as daprd waits for it.

        The app is another process with nothing to await: its port is tried again
        every 50 ms, until `timeout` seconds (None: for ever). Raises `AppChannelError`.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        reported = started
        while True:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
            except (OSError, asyncio.TimeoutError) as exc:
                now = loop.time()
                if timeout is not None and now - started >= timeout:
                    raise AppChannelError(
                        f"the app did not open {self.address} within {timeout:g}s "
                        f"({describe(exc)}); is --app-port right, and is the app running?"
                    ) from None
                if now - reported >= _WAIT_REPORT:
                    reported = now
                    logger.info(
                        "waiting for the app to listen on %s (%.0fs so far)", self.address, now - started
                    )
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def subscriptions(self, app_id: str, app_api_token: str | None) -> list[TopicSubscription]:
        """The app's programmatic subscriptions, from `GET /dapr/subscribe` (reference 2.1).

        As daprd: a 404 means none; another status is logged and means none; an
        answer daprd would refuse whole raises `SubscriptionError`. Transport
        errors are retried three times, then raise `AppChannelError` (which the
        sidecar logs, and goes on, as daprd does).
        """
        headers = [("content-type", "application/json"), ("dapr-app-id", app_id)]
        if app_api_token:
            headers.append(("dapr-api-token", app_api_token))
        for pause in (*_SUBSCRIBE_RETRIES, None):
            try:
                response = await self._pool.request("GET", "/dapr/subscribe", headers, None)
                body = b"".join([chunk async for chunk in response.chunks()])
                break
            except (OSError, asyncio.TimeoutError) as exc:
                if pause is None:
                    raise AppChannelError(
                        f"GET /dapr/subscribe on the app at {self.address} failed: {describe(exc)}"
                    ) from exc
                await asyncio.sleep(pause)
        if response.status == 404:
            logger.debug("the app has no GET /dapr/subscribe (404): no programmatic subscriptions")
            return []
        if response.status != 200:
            logger.error(
                "GET /dapr/subscribe on the app answered %d, not 200: no programmatic subscriptions",
                response.status,
            )
            return []
        try:
            found, warnings = parse_subscribe_answer(body)
        except SubscriptionError as exc:
            raise SubscriptionError(f"the app's GET /dapr/subscribe answer was refused: {exc}") from None
        for warning in warnings:
            logger.warning("GET /dapr/subscribe: %s", warning)
        return found
