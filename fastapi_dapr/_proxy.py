"""Service invocation over the network: HTTPEndpoints, URLs and other app ids (reference 6.2 to 6.5).

A streaming reverse proxy on aiohttp's client. aiohttp carries the hot path
because it measured several times faster than httpx here (docs/benchmarks.md,
`bench/invoke_proxy.py`). Each target has its own connection pool, made on
first use and closed with the runtime.

Server-side request forgery is checked where it can't be dodged: URL targets
must match `InvocationSettings.allowed_urls`, and every address a name
resolves to is checked by the resolver of the pool that connects to it, so
the address checked is the address used (no second lookup to rebind).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from starlette.types import Receive, Scope, Send
from yarl import URL

from ._endpoints import ResolvedEndpoint
from ._errors import error_response
from ._exceptions import DaprAPIError
from ._invocation import InvocationSettings
from ._invoke import HOP_BY_HOP, VERBS

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
        "destination-app-id",
        "dapr-api-token",  # never sent outside this app: not the caller's, not APP_API_TOKEN
        "dapr-caller-app-id",
        "dapr-callee-app-id",
        "dapr-caller-namespace",
    }
)


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


class Upstream:
    """An answer being received: status and headers known, body still to come."""

    __slots__ = ("_response", "content", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = response_headers(response.raw_headers)
        self.content = response.content

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def next_chunk(self) -> tuple[bytes, bool]:
        """Whatever has arrived (an event is passed on at once), and whether it is the last.

        A small answer arrives whole with its headers: it is then sent in one piece.
        """
        chunk = await self.content.readany()
        return chunk, not chunk or self.content.at_eof()

    def release(self) -> None:
        """Give the connection back (the body was read) or drop it (it wasn't)."""
        self._response.release()

    def abort(self) -> None:
        self._response.close()


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


class _CheckedResolver(AbstractResolver):
    """Resolves a name, then refuses it if any of its addresses is not allowed.

    The connector connects only to what this returns, so the address checked
    is the address connected to, on redirects too. `trusted` names (an
    HTTPEndpoint's or an app's own host) are the operator's and reach any address.
    """

    def __init__(self, allow_private: bool, trusted: frozenset[str] = frozenset()) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._allow_private = allow_private
        self._trusted = trusted

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower().rstrip(".") not in self._trusted:
            for result in results:
                problem = address_problem(result["host"], self._allow_private)
                if problem is not None:
                    raise Forbidden(f"{host} resolves to {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


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
                url = URL(entry)
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
    return URL(text, encoded=True)


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
    if identity is not None:
        headers += [
            ("dapr-caller-app-id", identity[0]),
            ("dapr-callee-app-id", target.name),
            ("dapr-caller-namespace", identity[1]),
        ]
    if target.headers:
        overridden = {name.lower() for name, _ in target.headers}
        headers = [(name, value) for name, value in headers if name not in overridden]
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
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS: the certificate of {where} was refused: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake with {where} failed: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the host {url.host} could not be resolved: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"could not connect to {where}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer from {where} within the timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{where} closed the connection before answering"
    return f"{type(exc).__name__} talking to {where}: {exc}"


def invoke_error(status: int, target: str, message: str) -> DaprAPIError:
    return DaprAPIError(status, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {target}, err: {message}")


def _forbidden_cause(exc: BaseException) -> Forbidden | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Forbidden):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Upstreams:
    """The targets this app can invoke over the network, and a connection pool for each."""

    def __init__(
        self,
        settings: InvocationSettings,
        endpoints: Mapping[str, ResolvedEndpoint],
        *,
        app_id: str,
        namespace: str,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.app_id = app_id
        self.namespace = namespace
        self.policy = UrlPolicy(settings.allowed_urls, settings.allow_private_addresses)
        self._sessions: dict[str, aiohttp.ClientSession] = {}
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

    def _session(self, target: Target) -> aiohttp.ClientSession:
        key = target.pool_key
        session = self._sessions.get(key)
        if session is None:
            if self._closed:
                raise invoke_error(500, target.name, "the sidecar is shutting down")
            trusted = frozenset() if target.kind == "url" else frozenset({_host_of(target.base_url)})
            connector = aiohttp.TCPConnector(
                limit=self.settings.pool_size,
                ssl=target.ssl_context if target.ssl_context is not None else True,
                resolver=_CheckedResolver(self.settings.allow_private_addresses, trusted),
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # the body goes through as the upstream encoded it
                skip_auto_headers=_SKIP_AUTO,
                cookie_jar=aiohttp.DummyCookieJar(),  # one caller's cookies are never another's
                trust_env=False,
                timeout=aiohttp.ClientTimeout(
                    total=self.settings.timeout, sock_connect=self.settings.connect_timeout
                ),
            )
            self._sessions[key] = session
        return session

    async def close(self) -> None:
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

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
    ) -> Upstream:
        """Send the request; the answer once its headers arrived. Raises `DaprAPIError`.

        `method` is the decoded path below the target's base URL (`escaped`: already escaped).
        """
        url = target_url(target.base_url, method, raw_query, escaped=escaped)
        session = self._session(target)
        for _ in range(_MAX_REDIRECTS + 1):
            response = await self._send(target, session, url, verb, headers, body, timeout)
            if target.kind != "endpoint" or response.status not in _REDIRECTS:
                return response
            # daprd's HTTPEndpoint channels follow redirects as Go's client does; URL
            # targets get the 3xx back. A body already streamed can't be sent twice.
            location = response._response.headers.get("location")
            replays_body = response.status in (307, 308)
            if location is None or (replays_body and body is not None and not isinstance(body, bytes)):
                return response
            next_url = url.join(URL(location))
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
                session = self._session(Target("url", str(next_url), str(next_url)))
            url = next_url
        raise invoke_error(500, target.name, f"stopped after {_MAX_REDIRECTS} redirects")

    async def _send(
        self,
        target: Target,
        session: aiohttp.ClientSession,
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
        options: dict[str, Any] = {}
        if timeout is not None:
            options["timeout"] = aiohttp.ClientTimeout(
                total=timeout, sock_connect=min(timeout, self.settings.connect_timeout)
            )
        try:
            response = await session.request(
                verb, url, headers=headers, data=body, allow_redirects=False, **options
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, Forbidden) as exc:
            forbidden = _forbidden_cause(exc)
            if forbidden is not None:
                raise invoke_error(403, target.name, str(forbidden)) from None
            raise invoke_error(500, target.name, describe(exc, url)) from exc
        return Upstream(response)


def _host_of(base_url: str) -> str:
    return (URL(base_url).host or "").lower().rstrip(".")


# -- the HTTP API's side -----------------------------------------------------


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class _RequestBody:
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
) -> None:
    """Serve one `/v1.0/invoke` request by streaming it to `target` and its answer back."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    headers = outbound_headers(
        raw,
        drop_app_id=via_header,
        target=target,
        identity=(upstreams.app_id, upstreams.namespace) if target.kind == "app" else None,
    )
    content_length = next((value for name, value in raw if name == b"content-length"), None)
    if content_length is not None and content_length.strip().isdigit():
        headers.append(("content-length", content_length.decode("latin-1").strip()))
    body = _RequestBody(receive, max_body_size) if _has_body(raw) else None
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
        )
    except DaprAPIError as exc:
        if body is not None and body.gone:
            return
        error = exc
        if body is not None and body.too_large:
            limit = f"the request body is larger than the limit of {max_body_size} bytes"
            error = DaprAPIError(413, "ERR_DIRECT_INVOKE", limit)
        await error_response(error)(scope, receive, send)
        return
    status = upstream.status
    if is_sse(headers) and 200 <= status < 300:
        status = 200  # as daprd: an event stream is answered 200
    watcher = None
    try:
        await send({"type": "http.response.start", "status": status, "headers": upstream.headers})
        if is_sse(headers) and (body is None or not body.gone):
            # An event stream may be idle for long: notice the caller leaving without
            # waiting for the next event, and stop the upstream then.
            watcher = asyncio.ensure_future(_wait_disconnect(receive))
            watcher.add_done_callback(lambda task: None if task.cancelled() else upstream.abort())
        while True:
            chunk, last = await upstream.next_chunk()
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if last:
                break
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        # Too late for an error answer: the caller sees the stream cut short.
        logger.warning("invocation of %s: the answer was cut short: %s", target.name, exc)
        upstream.abort()
        return
    except OSError:
        upstream.abort()  # the caller went away
        return
    finally:
        if watcher is not None:
            watcher.cancel()
    upstream.release()


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
