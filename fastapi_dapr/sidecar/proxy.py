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
import logging
import re
import ssl
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple
from urllib.parse import quote, unquote, urljoin, urlsplit

from starlette.types import Receive, Scope, Send

from .._exceptions import DaprAPIError
from .._headers import declared_length, invocation_headers, response_headers
from .._invocation import InvocationSettings
from .._retry import Clock, RetryPolicy
from .._trace import from_headers
from .addresses import embedded_ipv4, ip_literal
from .caller import CallerWatch, RequestBody, too_large_message
from .endpoints import ResolvedEndpoint
from .errors import describe, error_response
from .http1 import ConnectTimeout, Limits, MalformedAnswer, RequestError, Response, UpstreamError
from .invocation import VERBS
from .pool import Pool, Refused
from .timeouts import within

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

Kind = Literal["endpoint", "url", "app"]
Body = bytes | AsyncIterator[bytes] | None

PATH_SAFE = "/:@!$&'()*+,;=-._~"  # what Go leaves unescaped in a path
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10  # as Go's default client, which daprd's HTTPEndpoint channels use
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
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


class BadTarget(Exception):
    """A URL target whose path servers read in different ways (dot segments, `..;`,
    an encoded `/` or `\\`): 400, before anything is sent."""


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
    literal = ip_literal(address, zone=True)
    if literal is None:
        return f"{address!r} is not an IP address"
    ip = embedded_ipv4(literal)
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
                path = normalised_path(url.raw_path)
                path = path if path.endswith("/") else path + "/"
                self._prefixes.append(_Prefix(url.scheme, url.host.lower(), url.port, path))
            elif entry.startswith("*."):
                self._suffixes.append(entry[1:].lower())
            elif entry and "/" not in entry:
                self._hosts.add(entry.lower().rstrip("."))
            else:
                raise ValueError(f"allowed_urls: {entry!r} is neither a host, a *.domain nor a URL prefix")

    def check(self, url: URL) -> None:
        """Raise `Forbidden` unless `url` is allowed (its name's addresses are checked on
        connect), `BadTarget` for a path servers could read outside an allowed prefix."""
        host = (url.host or "").lower().rstrip(".")
        if url.scheme not in ("http", "https") or not host:
            raise Forbidden(f"{url} is not an http:// or https:// URL")
        path_problem(url.raw_path)
        if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url.raw_path_qs):
            raise BadTarget(f"{url!s}: whitespace and control characters are refused in URL targets")
        if not self._allows(url, host):
            raise Forbidden(
                f"URL targets are refused unless allowed: add {host!r} or a URL prefix to "
                "InvocationSettings(allowed_urls=...), or declare an HTTPEndpoint resource"
            )
        if ip_literal(host, brackets=True, zone=True) is not None:
            problem = address_problem(host, self.allow_private)
            if problem is not None:
                raise Forbidden(problem)

    def _allows(self, url: URL, host: str) -> bool:
        if host in self._hosts or any(host.endswith(suffix) for suffix in self._suffixes):
            return True
        path = normalised_path(url.raw_path)
        path = path if path.endswith("/") else path + "/"
        return any(
            prefix.scheme == url.scheme
            and prefix.host == host
            and prefix.port == url.port
            and path.startswith(prefix.path)
            for prefix in self._prefixes
        )


def path_problem(raw_path: str) -> None:
    """Raise `BadTarget` for a path whose segments servers read in different ways: a dot
    segment however encoded (twice encoded too, or in full-width dots), one followed by `;`
    parameters (`..;`, read as `..` by Tomcat and others), an encoded `/`, `\\` or NUL
    (decoded by some servers, or the end of the path for others), a `\\`."""
    if "\\" in raw_path:
        raise BadTarget(f"{raw_path!r}: a backslash is refused in the path of URL targets")
    for segment in raw_path.split("/"):
        decoded = segment
        for _ in range(3):  # what a server that decodes once, twice, thrice would see
            if unicodedata.normalize("NFKC", decoded).split(";", 1)[0] in (".", ".."):
                raise BadTarget(f"{raw_path!r}: '.' and '..' path segments are refused in URL targets")
            if "%" not in decoded:
                break
            decoded = unquote(decoded)
            if "/" in decoded or "\\" in decoded or "\x00" in decoded:
                raise BadTarget(
                    f"{raw_path!r}: an encoded '/', '\\' or NUL is refused in the path of URL targets"
                )


def normalised_path(raw_path: str) -> str:
    """`raw_path` with RFC 3986's normalisation of escapes: unreserved characters decoded,
    other escapes in upper case (`/%7Eu` and `/~u` are one path)."""
    if "%" not in raw_path:
        return raw_path

    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(one, raw_path)


# -- requests and answers ----------------------------------------------------


def target_url(base_url: str, method: str, raw_query: str, *, escaped: bool = False) -> URL:
    """daprd's outbound URL: base, `/`, the method re-escaped as Go does, and the raw query."""
    path = method if escaped else quote(method, safe=PATH_SAFE)
    text = base_url + ("" if method.startswith("/") else "/") + path
    if raw_query:
        text += "?" + raw_query
    return URL.parse(text)


def is_sse(headers: Sequence[tuple[str, str]]) -> bool:
    """daprd's test: an `Accept` of exactly `text/event-stream`."""
    return any(
        name.lower() == "accept" and value.strip().lower() == "text/event-stream" for name, value in headers
    )


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


# -- the HTTP API's side -----------------------------------------------------


def caller_error(error: DaprAPIError, body: RequestBody | None, max_body_size: int) -> DaprAPIError | None:
    """What to answer for a failed invocation: None when the caller went away meanwhile, and
    413 when what failed was its streamed body going over the limit."""
    if body is not None and body.gone:
        return None
    if body is not None and body.too_large:
        limit = too_large_message(max_body_size)
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
    """Serve one `/v1.0/invoke` request by streaming it to `target` and its answer back.

    The caller is watched from the end of its body to the end of the answer: when it
    goes away, the exchange is cancelled and its connection closed, whatever the
    answer's kind (daprd cancels the upstream request with its caller's context)."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    headers = invocation_headers(
        raw,
        target=target,
        identity=(upstreams.app_id, upstreams.namespace),
        trace=from_headers(raw),
        drop_app_id=via_header,
    )
    verb = scope["method"].upper()
    if verb not in VERBS:
        verb = "POST"  # as daprd sends a verb it does not know
    with CallerWatch(receive) as watch:
        body = RequestBody(receive, max_body_size, on_end=watch.start) if _has_body(raw) else None
        if body is None:
            watch.start()
        try:
            upstream = await upstreams.open(
                target,
                method,
                verb,
                scope.get("query_string", b"").decode("latin-1"),
                headers,
                body.__aiter__() if body is not None else None,
                length=declared_length(raw) if body is not None else None,
                connect_retry=connect_retry,
                clock=clock,
            )
        except DaprAPIError as exc:
            error = caller_error(exc, body, max_body_size)
            if error is not None:
                await error_response(error)(scope, receive, send)
            return
        watch.on_gone(upstream.abort)
        if not upstream.uploading:
            watch.start()  # an early answer stopped the upload: what is left of the body is nobody's
        await stream_answer(upstream, send, target.name, event_stream=is_sse(headers), watch=watch)


async def stream_answer(
    upstream: Upstream, send: Send, name: str, *, event_stream: bool, watch: CallerWatch
) -> None:
    """Pass the upstream's answer on to the caller as it arrives; its connection is given
    back once the body is whole, closed otherwise (and at once when the caller leaves)."""
    status = upstream.status
    if event_stream and 200 <= status < 300:
        status = 200  # as daprd: an event stream is answered 200
    try:
        await send({"type": "http.response.start", "status": status, "headers": upstream.headers})
        while not watch.gone:
            chunk, last = await upstream.next_chunk()
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                break
    except MalformedAnswer:
        pass  # logged where it was found; the caller sees the answer cut short
    except UpstreamError as exc:
        # Too late for an error answer: the caller sees the answer cut short.
        logger.warning("invocation of %s: the answer was cut short: %s", name, exc)
    except OSError:
        pass  # the caller went away
    finally:
        upstream.abort()  # nothing if the answer was read whole: its connection is back in the pool
