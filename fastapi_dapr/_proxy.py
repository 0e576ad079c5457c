"""Service invocation over the network: HTTPEndpoints, URLs and other app ids (reference 6.2 to 6.5).

A streaming reverse proxy on the lean HTTP/1.1 client of `_http1` (chosen by
`bench/invoke_proxy.py`: see docs/invocation.md). Each target has its own
connection pools, made on first use and closed with the runtime.

Server-side request forgery is checked where it can't be dodged: URL targets
must match `InvocationSettings.allowed_urls`, and every address a name
resolves to is checked by the pool that then connects to that very address
(no second lookup to rebind).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple
from urllib.parse import quote, unquote, urljoin, urlsplit

from starlette.types import Receive, Scope, Send

from ._endpoints import ResolvedEndpoint
from ._errors import error_response
from ._exceptions import DaprAPIError
from ._http1 import ConnectTimeout, Pool, Refused, Response, UpstreamError
from ._invocation import InvocationSettings
from ._invoke import HOP_BY_HOP, VERBS
from ._retry import Clock, RetryPolicy
from ._trace import from_headers, header_pairs

if TYPE_CHECKING:
    from ._metrics import Metrics

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

Kind = Literal["endpoint", "url", "app"]
Body = bytes | AsyncIterator[bytes] | None

PATH_SAFE = "/:@!$&'()*+,;=-._~"  # what Go leaves unescaped in a path
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10  # as Go's default client, which daprd's HTTPEndpoint channels use
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DROPPED = frozenset(
    {
        "host",
        "content-length",
        "expect",
        "grpc-trace-bin",
        "traceparent",  # re-derived below, as daprd does
        "tracestate",
        "destination-app-id",
        "dapr-api-token",  # never sent outside this app: not the caller's, not APP_API_TOKEN
        "dapr-caller-app-id",
        "dapr-callee-app-id",
        "dapr-caller-namespace",
    }
)


_DEFAULT_PORTS = {"http": 80, "https": 443}


class URL(NamedTuple):
    """An absolute http(s) URL, its path and query kept as escaped as they were written."""

    scheme: str
    host: str | None  # lower case, IPv6 without brackets
    port: int | None
    raw_path: str
    query: str

    @classmethod
    def parse(cls, text: str) -> URL:
        """Raises `ValueError` for a port that is not one."""
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        port = parts.port  # ValueError when out of range or not a number
        return cls(scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme), parts.path or "/", parts.query)

    @property
    def raw_path_qs(self) -> str:
        return self.raw_path + ("?" + self.query if self.query else "")

    def __str__(self) -> str:
        host = self.host or ""
        netloc = f"[{host}]" if ":" in host else host
        if self.port is not None and self.port != _DEFAULT_PORTS.get(self.scheme):
            netloc += f":{self.port}"
        return f"{self.scheme}://{netloc}{self.raw_path_qs}"

    def join(self, location: str) -> URL:
        return URL.parse(urljoin(str(self), location))


class Forbidden(Exception):
    """The invocation policy refuses this address or URL: 403."""


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


# -- the address policy ------------------------------------------------------


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why the proxy may not connect to `address`; None if it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is not a unicast address"
    if ip.is_global or allow_private:
        return None
    if ip.is_loopback:
        kind = "loopback"
    elif ip.is_link_local:
        kind = "link-local (cloud metadata services live there)"
    elif ip.is_private:
        kind = "private"
    else:
        kind = "not public"
    hint = "set InvocationSettings(allow_private_addresses=True) to allow such targets"
    return f"{ip} is a {kind} address; {hint}"


def address_check(allow_private: bool) -> Callable[[str, str], None]:
    """The check a pool runs on every address a name resolves to, before connecting."""

    def check(host: str, address: str) -> None:
        problem = address_problem(address, allow_private)
        if problem is not None:
            raise Refused(f"{host} resolves to {problem}")

    return check


@dataclasses.dataclass(frozen=True)
class _Prefix:
    scheme: str
    host: str
    port: int
    path: str


class UrlPolicy:
    """`InvocationSettings.allowed_urls`, and the address rule for literal IPs."""

    def __init__(self, allowed: Sequence[str], allow_private: bool) -> None:
        self.allow_private = allow_private
        self._hosts: set[str] = set()
        self._suffixes: list[str] = []
        self._prefixes: list[_Prefix] = []
        for entry in allowed:
            if "://" in entry:
                url = URL.parse(entry)
                if url.scheme not in ("http", "https") or not url.host or url.port is None:
                    raise ValueError(f"allowed_urls: {entry!r} is not an http:// or https:// URL prefix")
                path = url.raw_path if url.raw_path.endswith("/") else url.raw_path + "/"
                self._prefixes.append(_Prefix(url.scheme, url.host.lower(), url.port, path))
            elif entry.startswith("*."):
                self._suffixes.append(entry[1:].lower())
            elif entry and "/" not in entry:
                self._hosts.add(entry.lower().rstrip("."))
            else:
                raise ValueError(f"allowed_urls: {entry!r} is neither a host, a *.domain nor a URL prefix")

    def check(self, url: URL) -> None:
        """Raise `Forbidden` unless `url` is allowed (its name's addresses are checked on connect)."""
        host = (url.host or "").lower().rstrip(".")
        if url.scheme not in ("http", "https") or not host:
            raise Forbidden(f"{url} is not an http:// or https:// URL")
        for segment in url.raw_path.split("/"):
            if unquote(segment) in (".", ".."):
                raise Forbidden(f"{url}: '.' and '..' path segments are refused in URL targets")
        if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url.raw_path_qs):
            raise Forbidden(f"{url!s}: whitespace and control characters are refused in URL targets")
        if not self._allows(url, host):
            raise Forbidden(
                f"URL targets are refused unless allowed: add {host!r} or a URL prefix to "
                "InvocationSettings(allowed_urls=...), or declare an HTTPEndpoint resource"
            )
        if _is_ip(host):
            problem = address_problem(host, self.allow_private)
            if problem is not None:
                raise Forbidden(problem)

    def _allows(self, url: URL, host: str) -> bool:
        if host in self._hosts or any(host.endswith(suffix) for suffix in self._suffixes):
            return True
        path = url.raw_path if url.raw_path.endswith("/") else url.raw_path + "/"
        return any(
            prefix.scheme == url.scheme
            and prefix.host == host
            and prefix.port == url.port
            and path.startswith(prefix.path)
            for prefix in self._prefixes
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


# -- requests and answers ----------------------------------------------------


def target_url(base_url: str, method: str, raw_query: str, *, escaped: bool = False) -> URL:
    """daprd's outbound URL: base, `/`, the method re-escaped as Go does, and the raw query."""
    path = method if escaped else quote(method, safe=PATH_SAFE)
    text = base_url + ("" if method.startswith("/") else "/") + path
    if raw_query:
        text += "?" + raw_query
    return URL.parse(text)


def outbound_headers(
    raw: Sequence[tuple[bytes, bytes]],
    *,
    drop_app_id: bool,
    target: Target,
    identity: tuple[str, str] | None,
) -> list[tuple[str, str]]:
    """The request headers for `target`, as daprd builds them (reference 6.3), minus tokens.

    `identity` is (this app's id, namespace) for another app: the caller and
    callee headers daprd adds between sidecars. Resource headers override.
    """
    listed: set[str] = set()
    for raw_name, raw_value in raw:
        if raw_name == b"connection":
            listed.update(part.strip().lower() for part in raw_value.decode("latin-1").split(","))
    headers: list[tuple[str, str]] = []
    for name_bytes, value_bytes in raw:
        name = name_bytes.decode("latin-1").lower()
        if name in HOP_BY_HOP or name in _DROPPED or name in listed or name.endswith("-bin"):
            continue
        if drop_app_id and name == "dapr-app-id":
            continue
        if name.startswith("grpc-"):
            name = "dapr-" + name
        headers.append((name, value_bytes.decode("latin-1")))
    headers += header_pairs(from_headers(list(raw)))
    return with_target_headers(headers, target, identity)


def with_target_headers(
    headers: list[tuple[str, str]], target: Target, identity: tuple[str, str] | None
) -> list[tuple[str, str]]:
    """Dapr's caller and callee headers for another app, then the resource's headers,
    which override the caller's of the same name (reference 6.3)."""
    if identity is not None and target.kind == "app":
        headers = [
            *headers,
            ("dapr-caller-app-id", identity[0]),
            ("dapr-callee-app-id", target.name),
            ("dapr-caller-namespace", identity[1]),
        ]
    if target.headers:
        overridden = {name.lower() for name, _ in target.headers}
        headers = [(name, value) for name, value in headers if name.lower() not in overridden]
        headers += target.headers
    return headers


def response_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers minus hop-by-hop ones and those its `Connection` names."""
    listed: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            listed.update(part.strip().lower().encode() for part in value.decode("latin-1").split(","))
    result = []
    for name, value in raw:
        lower = name.lower()
        if lower.decode("latin-1") in HOP_BY_HOP or lower in listed:
            continue
        result.append((lower, value))
    return result


def is_sse(headers: Sequence[tuple[str, str]]) -> bool:
    """daprd's test: an `Accept` of exactly `text/event-stream`."""
    return any(
        name.lower() == "accept" and value.strip().lower() == "text/event-stream" for name, value in headers
    )


def describe(exc: BaseException, url: URL) -> str:
    """A useful message for a transport failure."""
    where = f"{url.host}:{url.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {where} was refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"the host {url.host} could not be resolved: {exc.strerror}"
    if isinstance(exc, UpstreamError):
        return f"{where}: {exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer from {where} within the timeout"
    if isinstance(exc, OSError):
        return f"could not connect to {where}: {exc.strerror or exc}"
    return f"{type(exc).__name__} talking to {where}: {exc}"


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
        timeout: float | None = None,
        escaped: bool = False,
        connect_retry: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> Upstream:
        """Send the request; the answer once its headers arrived. Raises `DaprAPIError`.

        `method` is the decoded path below the target's base URL (`escaped`: already
        escaped). `connect_retry` retries, on `clock`, a first request that could not
        connect at all (daprd's built-in retry of another app's sidecar): nothing of it
        was sent, so even a streamed body is whole.
        """
        try:
            url = target_url(target.base_url, method, raw_query, escaped=escaped)
        except ValueError as exc:
            raise invoke_error(500, target.name, f"not a valid URL: {exc}") from None
        hop_target = target
        response = await self._send_first(target, url, verb, headers, body, timeout, connect_retry, clock)
        for hop in range(_MAX_REDIRECTS + 1):
            if hop:
                response = await self._send(hop_target, url, verb, headers, body, timeout)
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
            response.release()
            if not replays_body and verb != "HEAD":
                verb, body = "GET", None
                headers = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")]
            if (next_url.scheme, next_url.host, next_url.port) != (url.scheme, url.host, url.port):
                # Another origin: the URL rules apply, and the resource's own headers
                # and credentials stay behind, as Go's client drops them.
                try:
                    self.policy.check(next_url)
                except Forbidden as exc:
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
        timeout: float | None,
        connect_retry: RetryPolicy | None,
        clock: Clock | None,
    ) -> Upstream:
        retries = 0
        metrics = self.metrics
        while True:
            try:
                if metrics is None:
                    return await self._send(target, url, verb, headers, body, timeout)
                # Each request sent, and each answer, as daprd's direct messaging counts them.
                streaming = body is not None and not isinstance(body, bytes)
                metrics.invocation_sent(target.name, streaming)
                started = time.perf_counter()
                response = await self._send(target, url, verb, headers, body, timeout)
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
        timeout: float | None,
    ) -> Upstream:
        if target.kind == "url":
            try:
                self.policy.check(url)
            except Forbidden as exc:
                raise invoke_error(403, target.name, str(exc)) from None
        limit = timeout if timeout is not None else self.settings.timeout
        try:
            pool = self._pool(target, url)
            sending = pool.request(verb, url.raw_path_qs, headers, body)
            response = await (asyncio.wait_for(sending, limit) if limit is not None else sending)
        except Refused as exc:
            raise invoke_error(403, target.name, str(exc)) from None
        except asyncio.TimeoutError:
            where = f"{url.host}:{url.port}"
            raise invoke_error(500, target.name, f"no answer from {where} within {limit}s") from None
        except Exception as exc:
            raise invoke_error(500, target.name, describe(exc, url)) from exc
        response.headers = response_headers(response.headers)
        return response


def _host_of(base_url: str) -> str:
    try:
        return (URL.parse(base_url).host or "").lower().rstrip(".")
    except ValueError:
        return ""


# -- the HTTP API's side -----------------------------------------------------


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class RequestBody:
    """The caller's body, passed on chunk by chunk and counted against the limit."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self.too_large = False
        self.gone = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone  # the upstream must not take a cut body for a whole one
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > self._limit:
                self.too_large = True
                raise BodyTooLarge
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


def caller_error(error: DaprAPIError, body: RequestBody | None, max_body_size: int) -> DaprAPIError | None:
    """What to answer for a failed invocation: None when the caller went away meanwhile, and
    413 when what failed was its streamed body going over the limit."""
    if body is not None and body.gone:
        return None
    if body is not None and body.too_large:
        limit = f"the request body is larger than the limit of {max_body_size} bytes"
        return DaprAPIError(413, "ERR_DIRECT_INVOKE", limit)
    return error


def _has_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


async def proxy_asgi(
    upstreams: Upstreams,
    target: Target,
    method: str,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    via_header: bool,
    max_body_size: int,
    connect_retry: RetryPolicy | None = None,
    clock: Clock | None = None,
) -> None:
    """Serve one `/v1.0/invoke` request by streaming it to `target` and its answer back."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    headers = outbound_headers(
        raw,
        drop_app_id=via_header,
        target=target,
        identity=(upstreams.app_id, upstreams.namespace),
    )
    content_length = next((value for name, value in raw if name == b"content-length"), None)
    if content_length is not None and content_length.strip().isdigit():
        headers.append(("content-length", content_length.decode("latin-1").strip()))
    body = RequestBody(receive, max_body_size) if _has_body(raw) else None
    verb = scope["method"].upper()
    if verb not in VERBS:
        verb = "POST"  # as daprd sends a verb it does not know
    try:
        upstream = await upstreams.open(
            target,
            method,
            verb,
            scope.get("query_string", b"").decode("latin-1"),
            headers,
            body.__aiter__() if body is not None else None,
            connect_retry=connect_retry,
            clock=clock,
        )
    except DaprAPIError as exc:
        error = caller_error(exc, body, max_body_size)
        if error is not None:
            await error_response(error)(scope, receive, send)
        return
    status = upstream.status
    if is_sse(headers) and 200 <= status < 300:
        status = 200  # as daprd: an event stream is answered 200
    watcher = None
    try:
        await send({"type": "http.response.start", "status": status, "headers": upstream.headers})
        streamed = upstream.header(b"content-length") is None and verb != "HEAD"
        if (is_sse(headers) or streamed) and (body is None or not body.gone):
            # An event stream or another answer without a length may go on for long:
            # notice the caller leaving, and stop the upstream then.
            watcher = asyncio.ensure_future(_wait_disconnect(receive))
            watcher.add_done_callback(lambda task: None if task.cancelled() else upstream.abort())
        while True:
            chunk, last = await upstream.next_chunk()
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                break
    except UpstreamError as exc:
        if watcher is None or not watcher.done():  # not the caller leaving an event stream
            # Too late for an error answer: the caller sees the stream cut short.
            logger.warning("invocation of %s: the answer was cut short: %s", target.name, exc)
    except OSError:
        pass  # the caller went away
    finally:
        if watcher is not None:
            watcher.cancel()
        upstream.abort()  # nothing if the answer was read whole: its connection is back in the pool


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
