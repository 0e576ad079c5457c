"""The upstreams of service invocation: HTTPEndpoints, URLs and other app ids (reference 6.2 to 6.5).

A streaming reverse proxy on the lean HTTP/1.1 client of `http1` (chosen by
`bench/invoke_proxy.py`: see docs/invocation.md). Each target has its own
connection pools, made on first use and closed with the runtime; redirects are
followed as daprd's HTTPEndpoint channels follow them. What may be reached is
the `UrlPolicy`'s to say (`url_policy.py`); the HTTP API's request is relayed
by `relay.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from .._exceptions import DaprAPIError
from .._go import PATH_SAFE
from .._headers import response_headers
from .._invocation import InvocationSettings
from .._retry import Clock, RetryPolicy
from .endpoints import ResolvedEndpoint
from .errors import describe
from .http1 import ConnectTimeout, Limits, RequestError, Response, UpstreamError
from .pool import Pool, Refused
from .timeouts import within
from .url_policy import URL, BadTarget, Forbidden, UrlPolicy, address_problem

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

Kind = Literal["endpoint", "url", "app"]
Body = bytes | AsyncIterator[bytes] | None

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10  # as Go's default client, which daprd's HTTPEndpoint channels use


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an invocation goes, once resolved."""

    kind: Kind
    name: str  # as the caller named it: the resource name, the URL, the app id
    base_url: str
    headers: tuple[tuple[str, str], ...] = ()
    ssl_context: ssl.SSLContext | None = None

    @property
    def pool_key(self) -> str:
        return "url:" if self.kind == "url" else f"{self.kind}:{self.name}"


Upstream = Response  # an answer being received: status and headers known, body to come


def target_url(base_url: str, method: str, raw_query: str, *, escaped: bool = False) -> URL:
    """daprd's outbound URL: base, `/`, the method re-escaped as Go does, and the raw query."""
    path = method if escaped else quote(method, safe=PATH_SAFE)
    text = base_url + ("" if method.startswith("/") else "/") + path
    if raw_query:
        text += "?" + raw_query
    return URL.parse(text)


def address_check(allow_private: bool) -> Callable[[str, str], None]:
    """The check a pool runs on every address a name resolves to, before connecting."""

    def check(host: str, address: str) -> None:
        problem = address_problem(address, allow_private)
        if problem is not None:
            raise Refused(f"{host} resolves to {problem}")

    return check


def invoke_error(status: int, target: str, message: str) -> DaprAPIError:
    return DaprAPIError(status, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {target}, err: {message}")


def connect_failed(error: DaprAPIError) -> bool:
    """Whether an invocation failed before anything was sent: no connection could be made."""
    cause = error.__cause__
    if isinstance(cause, ConnectTimeout):
        return True
    return isinstance(cause, OSError) and not isinstance(cause, (UpstreamError, ssl.SSLError))


class Upstreams:
    """The targets this app can invoke over the network, and a connection pool for each."""

    def __init__(
        self,
        settings: InvocationSettings,
        endpoints: Mapping[str, ResolvedEndpoint],
        *,
        app_id: str,
        namespace: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.endpoints = endpoints
        self.app_id = app_id
        self.namespace = namespace
        self.policy = UrlPolicy(settings.allowed_urls, settings.allow_private_addresses)
        self.limits = Limits(settings.max_line_size, settings.max_head_size)
        self._pools: dict[tuple[str, str, str, int], Pool] = {}
        self._closed = False

    def resolve(self, name: str) -> Target | None:
        """The network target called `name` (not this app's own id), in Dapr's precedence."""
        endpoint = self.endpoints.get(name)
        if endpoint is not None:
            return Target("endpoint", name, endpoint.base_url, endpoint.headers, endpoint.ssl_context)
        if name.startswith(("http://", "https://")):
            return Target("url", name, name)
        base_url = self.settings.apps.get(name)
        if base_url is None:
            app, dot, namespace = name.partition(".")
            if dot and namespace == self.namespace:
                base_url = self.settings.apps.get(app)
        if base_url is not None:
            return Target("app", name, base_url)
        return None

    def _pool(self, target: Target, url: URL) -> Pool:
        """The pool for `url`'s origin, as reached for `target` (its TLS and its trust)."""
        scheme, host, port = url.scheme, (url.host or "").lower().rstrip("."), url.port or 0
        key = (target.pool_key, scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            if self._closed:
                raise invoke_error(500, target.name, "the sidecar is shutting down")
            # The operator's own targets reach any address on their own host; everything
            # else is checked on every address it resolves to.
            trusted = target.kind != "url" and host == _host_of(target.base_url)
            pool = Pool(
                scheme,
                host,
                port,
                ssl_context=target.ssl_context if trusted else None,
                check=None if trusted else address_check(self.settings.allow_private_addresses),
                connect_timeout=self.settings.connect_timeout,
                limit=self.settings.pool_size,
                limits=self.limits,
            )
            self._pools[key] = pool
        return pool

    async def close(self) -> None:
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    async def open(
        self,
        target: Target,
        method: str,
        verb: str,
        raw_query: str,
        headers: list[tuple[str, str]],
        body: Body,
        *,
        length: int | None = None,
        timeout: float | None = None,
        escaped: bool = False,
        connect_retry: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> Upstream:
        """Send the request; the answer once its headers arrived. Raises `DaprAPIError`.

        `method` is the decoded path below the target's base URL (`escaped`: already
        escaped). `headers` come from `_headers` (no framing: `length` is what a
        streamed `body` declared, None to send it chunked). `connect_retry` retries, on
        `clock`, a first request that could not connect at all (daprd's built-in retry
        of another app's sidecar): nothing of it was sent, so even a streamed body is whole.
        """
        try:
            url = target_url(target.base_url, method, raw_query, escaped=escaped)
        except ValueError as exc:
            raise invoke_error(500, target.name, f"not a valid URL: {exc}") from None
        hop_target = target
        response = await self._send_first(
            target, url, verb, headers, body, length, timeout, connect_retry, clock
        )
        for hop in range(_MAX_REDIRECTS + 1):
            if hop:
                response = await self._send(hop_target, url, verb, headers, body, length, timeout)
            if target.kind != "endpoint" or response.status not in _REDIRECTS:
                return response
            # daprd's HTTPEndpoint channels follow redirects as Go's client does; URL
            # targets get the 3xx back. A body already streamed can't be sent twice.
            location_bytes = response.header(b"location")
            location = location_bytes.decode("latin-1") if location_bytes is not None else None
            replays_body = response.status in (307, 308)
            if location is None or (replays_body and body is not None and not isinstance(body, bytes)):
                return response
            try:
                next_url = url.join(location)
            except ValueError:
                return response  # a Location that is not a URL: the caller gets the 3xx
            await _let_go(response)
            if not replays_body and verb != "HEAD":
                verb, body, length = "GET", None, None
                headers = [(k, v) for k, v in headers if k != "content-type"]
            if (next_url.scheme, next_url.host, next_url.port) != (url.scheme, url.host, url.port):
                # Another origin: the URL rules apply, and the resource's own headers
                # and credentials stay behind, as Go's client drops them.
                try:
                    self.policy.check(next_url)
                except (Forbidden, BadTarget) as exc:
                    raise invoke_error(403, target.name, f"redirect to {next_url} refused: {exc}") from None
                private = {name.lower() for name, _ in target.headers} | {"authorization", "cookie"}
                headers = [(k, v) for k, v in headers if k.lower() not in private]
                hop_target = Target("url", str(next_url), str(next_url))
            url = next_url
        raise invoke_error(500, target.name, f"stopped after {_MAX_REDIRECTS} redirects")

    async def _send_first(
        self,
        target: Target,
        url: URL,
        verb: str,
        headers: list[tuple[str, str]],
        body: Body,
        length: int | None,
        timeout: float | None,
        connect_retry: RetryPolicy | None,
        clock: Clock | None,
    ) -> Upstream:
        retries = 0
        metrics = self.metrics
        while True:
            try:
                if metrics is None:
                    return await self._send(target, url, verb, headers, body, length, timeout)
                # Each request sent, and each answer, as daprd's direct messaging counts them.
                streaming = body is not None and not isinstance(body, bytes)
                metrics.invocation_sent(target.name, streaming)
                started = time.perf_counter()
                response = await self._send(target, url, verb, headers, body, length, timeout)
                elapsed = (time.perf_counter() - started) * 1000
                metrics.invocation_answered(target.name, response.status, streaming, elapsed)
                return response
            except DaprAPIError as exc:
                if connect_retry is None or not connect_failed(exc):
                    raise
                retries += 1
                delay = connect_retry.delay(retries, 0.0)
                if delay is None:
                    raise
                logger.warning("invocation of %s: %s; retrying in %gs", target.name, exc.message, delay)
                await (clock or Clock()).sleep(delay)

    async def _send(
        self,
        target: Target,
        url: URL,
        verb: str,
        headers: list[tuple[str, str]],
        body: Body,
        length: int | None,
        timeout: float | None,
    ) -> Upstream:
        if target.kind == "url":
            try:
                self.policy.check(url)
            except Forbidden as exc:
                raise invoke_error(403, target.name, str(exc)) from None
            except BadTarget as exc:
                raise invoke_error(400, target.name, str(exc)) from None
        limit = timeout if timeout is not None else self.settings.timeout
        try:
            pool = self._pool(target, url)
            sending = pool.request(verb, url.raw_path_qs, headers, body, length=length)
            response = await within(sending, limit, Response.abort)
        except Refused as exc:
            raise invoke_error(403, target.name, str(exc)) from None
        except RequestError as exc:
            raise invoke_error(400, target.name, str(exc)) from None
        except asyncio.TimeoutError:
            where = f"{url.host}:{url.port}"
            raise invoke_error(500, target.name, f"no answer from {where} within {limit}s") from None
        except Exception as exc:
            raise invoke_error(500, target.name, describe(exc, (url.host, url.port))) from exc
        response.headers = response_headers(response.headers, response.status)
        return response


async def _let_go(response: Upstream, limit: int = 64 * 1024) -> None:
    """Read a redirect's short body away, so that its connection serves the next hop;
    a long one, or one that does not come at once, closes it instead."""
    length = response.header(b"content-length")
    if length is None or not length.isdigit() or int(length) > limit:
        response.abort()
        return

    async def read_away() -> None:
        while not (await response.next_chunk())[1]:
            pass  # the last chunk gives the connection back

    try:
        await within(read_away(), 1.0)
    except (UpstreamError, asyncio.TimeoutError):
        response.abort()


def _host_of(base_url: str) -> str:
    try:
        return (URL.parse(base_url).host or "").lower().rstrip(".")
    except ValueError:
        return ""
