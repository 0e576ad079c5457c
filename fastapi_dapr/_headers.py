"""Which headers cross an HTTP hop: one rule for a request's, one for an answer's.

Every request the sidecar passes on takes its headers from `forwardable`: the
proxy of `/v1.0/invoke`, `Dapr.invoke`, the resiliency path, the standalone
sidecar's app channel, and the app's own routes called in process.
`invocation_headers` adds Dapr's rules for a target over the network on top
(reference 6.3). The framing (`Host`, `Content-Length`, `Transfer-Encoding`) is
never taken from a caller: `_pool.request_head` sets it from the body.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Sequence
from typing import Protocol

from ._trace import header_pairs

__all__: list[str] = []


class Target(Protocol):
    """What the header rules read of an invocation's target (`sidecar.proxy.Target` is one):
    declared here so that the app side needs nothing of the sidecar's."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...


HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
# Framing a hop sets for itself: never a caller's.
_FRAMING = frozenset({"host", "content-length", "expect"})
_BODILESS = frozenset({"content-length"})
# What `_pool.request_head` writes itself: a header of these names given to it is a bug.
CLIENT_SET = frozenset({"host", "content-length", "transfer-encoding", "connection"})

# Names no configuration may set on a request: the client's own, and hop-by-hop ones.
NOT_SETTABLE = HOP_BY_HOP | CLIENT_SET | {"expect"}

TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110's token: a method, a header name
TOKEN_RE = re.compile(TOKEN)
NAMES_RE = re.compile(rf"{TOKEN}(?:\n{TOKEN})*")  # names joined by "\n": one match for all
BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB (Go's ValidHeaderFieldValue)
IDENTITY = frozenset({"dapr-caller-app-id", "dapr-callee-app-id", "dapr-caller-namespace"})
# Never sent to a network target: re-derived (trace), set by the sidecar (identity), or a
# secret of this app (tokens).
_DAPR_OWN = IDENTITY | {"traceparent", "tracestate", "grpc-trace-bin", "destination-app-id", "dapr-api-token"}

Raw = Iterable[tuple[bytes, bytes]] | Iterable[tuple[str, str]]


def field_problem(name: str, value: str) -> str | None:
    """Why `name: value` cannot be sent in an HTTP/1.1 head; None when it can."""
    if not TOKEN_RE.fullmatch(name):
        return f"the header name {name[:40]!r} is not an HTTP token"
    if BAD_VALUE_RE.search(value):
        return f"the header {name!r} has CR, LF, NUL or another control character in its value"
    if not value.isascii():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return f"the header {name!r} has a character that is not Latin-1 in its value"
    return None


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def not_passed_on(
    connection: Iterable[str], *, also: frozenset[str] = frozenset(), keep: frozenset[str] = frozenset()
) -> frozenset[str]:
    """The one rule of what crosses a hop: the names (lower case) a hop drops. The
    hop-by-hop headers, the names its `Connection` headers list (their values given as
    `connection`) and those in `also`; but never those in `keep`."""
    dropped = HOP_BY_HOP | also if also else HOP_BY_HOP
    for value in connection:
        dropped = dropped | {part.strip().lower() for part in value.split(",")}
    return dropped - keep if keep else dropped


def forwardable(raw: Raw, *, keep: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The headers of `raw` a hop passes on, names in lower case: all but the hop-by-hop
    headers, those `Connection` names, and the framing (`Host`, `Content-Length`,
    `Expect`) unless named in `keep` (an in-process call keeps its `Content-Length`)."""
    items = typing.cast("list[tuple[bytes | str, bytes | str]]", list(raw))
    if items and isinstance(items[0][0], bytes):  # an ASGI scope's: the hot path
        scope_items = typing.cast("list[tuple[bytes, bytes]]", items)
        pairs = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in scope_items]
    else:
        pairs = [(_text(name).lower(), _text(value)) for name, value in items]
    dropped = not_passed_on(
        [value for name, value in pairs if name == "connection"], also=_FRAMING, keep=keep
    )
    return [(name, value) for name, value in pairs if name not in dropped]


def declared_length(raw: Raw) -> int | None:
    """The `Content-Length` a request declares, when it declares exactly one valid length."""
    found: int | None = None
    for name, value in raw:
        if _text(name).lower() == "content-length":
            text = _text(value).strip()
            if not text.isdigit() or not text.isascii() or (found is not None and int(text) != found):
                return None
            found = int(text)
    return found


def invocation_headers(
    raw: Raw,
    *,
    target: Target,
    identity: tuple[str, str] | None,
    trace: tuple[str, str] | None,
    drop_app_id: bool = False,
) -> list[tuple[str, str]]:
    """The request headers for a network `target`, as daprd builds them (reference 6.3),
    minus tokens: the forwardable ones but Dapr's own, then `trace`, the caller and callee
    headers for another app (`identity`: this app's id and namespace), then the
    resource's headers, which override the caller's of the same name."""
    headers = []
    for name, value in forwardable(raw):
        if name in _DAPR_OWN or name.endswith("-bin") or (drop_app_id and name == "dapr-app-id"):
            continue
        headers.append(("dapr-" + name if name.startswith("grpc-") else name, value))
    headers += header_pairs(trace)
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
        headers = [(name, value) for name, value in headers if name not in overridden]
        headers += [(name.lower(), value) for name, value in target.headers]
    return headers


def response_headers(raw: Sequence[tuple[bytes, bytes]], status: int = 200) -> list[tuple[bytes, bytes]]:
    """An answer's headers to pass on: all but hop-by-hop ones and those its `Connection` names,
    and a `Content-Length` of an answer that has no body (204, 304: ASGI servers would wait
    for the body it announces, and fail)."""
    bodiless = _BODILESS if status in (204, 304) or status < 200 else frozenset()
    lowered = [(name.lower(), value) for name, value in raw]
    listed = [value.decode("latin-1") for name, value in lowered if name == b"connection"]
    dropped = not_passed_on(listed, also=bodiless)
    return [(name, value) for name, value in lowered if name.decode("latin-1") not in dropped]
