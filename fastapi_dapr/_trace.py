"""W3C trace context (`traceparent`, `tracestate`) as daprd carries it with no tracing exporter.

daprd with no exporter configured starts no span of its own: each request's
span is the caller's, unchanged. So what it passes on is the caller's
`traceparent`, read and written back as OpenTelemetry reads and writes it
(version `00`, lower-case hex, a trace id and a span id that are not all zeros),
and the caller's `tracestate` with it; a `traceparent` it can't read is dropped,
`tracestate` with it, and nothing is sent in their place. Answers of the HTTP API
carry the request's `traceparent` when the answer has none of its own.

`CURRENT` is the trace of what the app is handling (a delivery, a request that
carried one), so that `Dapr.publish()` and `Dapr.invoke()` called there carry it on,
as an instrumented app does under daprd.
"""

from __future__ import annotations

import contextvars
import re

__all__: list[str] = []

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACESTATE = 512  # daprd sends no tracestate longer than this
_MAX_MEMBERS = 32

_HEX = re.compile(r"[0-9a-f]+\Z")
_FLAGS = re.compile(r"(?:[0-9a-fA-F]{2})+\Z")
_KEY = re.compile(r"[a-z][_0-9a-z\-*/]{0,255}\Z|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}\Z")
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\Z")

# (traceparent, tracestate) of the delivery or the request being handled.
CURRENT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "fastapi_dapr_trace", default=None
)


def traceparent(value: str | None) -> str | None:
    """A `traceparent` as daprd passes it on, or None when daprd can't read it."""
    if not value:
        return None
    sections = value.split("-")
    if len(sections) < 4 or len(sections[0]) != 2 or not _HEX.match(sections[0].lower()):
        return None
    version = int(sections[0], 16)
    if version > 254 or (version == 0 and len(sections) != 4):
        return None
    trace_id, span_id, flags = sections[1], sections[2], sections[3]
    if len(trace_id) != 32 or not _HEX.match(trace_id) or len(span_id) != 16 or not _HEX.match(span_id):
        return None
    if not _FLAGS.match(flags):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return f"00-{trace_id}-{span_id}-{flags[:2].lower()}"


def tracestate(value: str | None) -> str:
    """A `tracestate` as daprd writes it back (its list members, checked); "" when it is
    not one, has more than 32 members, a key twice, or is longer than daprd sends."""
    if not value:
        return ""
    members: list[str] = []
    keys: set[str] = set()
    for member in value.split(","):
        if not member:
            continue
        key, equals, data = member.partition("=")
        key, data = key.lstrip(" \t"), data.rstrip(" \t")
        if not equals or not _KEY.match(key) or not _VALUE.match(data) or key in keys:
            return ""
        keys.add(key)
        members.append(f"{key}={data}")
    if len(members) > _MAX_MEMBERS:
        return ""
    text = ",".join(members)
    return text if len(text) <= MAX_TRACESTATE else ""


def context(parent: str | None, state: str | None) -> tuple[str, str] | None:
    """(traceparent, tracestate) as daprd passes them on; None when there is no trace."""
    normalized = traceparent(parent)
    if normalized is None:
        return None
    return normalized, tracestate(state)


def from_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """The trace of an ASGI request's raw headers; None when it carries none daprd reads."""
    parent = state = None
    for name, value in headers:
        if name == b"traceparent":
            parent = value.decode("latin-1")
        elif name == b"tracestate":
            state = value.decode("latin-1")
    if parent is None:
        return None
    return context(parent, state)


def header_pairs(trace: tuple[str, str] | None) -> list[tuple[str, str]]:
    """The headers that carry `trace` on."""
    if trace is None:
        return []
    pairs = [(TRACEPARENT, trace[0])]
    if trace[1]:
        pairs.append((TRACESTATE, trace[1]))
    return pairs
