"""`Call`: one service invocation from the app's own code (`Dapr.invoke`), checked and encoded.

What both modes do before sending: the verb and the method checked as daprd checks them,
the body encoded, the headers checked, the trace chosen. A backend then sends it: to daprd
(remote mode), to another app or URL, or to this app's own route (embedded mode).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlencode

from ._exceptions import DaprAPIError
from ._go import path_clean
from ._headers import declared_length, field_problem
from ._trace import CURRENT, context

__all__: list[str] = []

VERBS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})

Body = bytes | AsyncIterator[bytes] | None


class InvalidMethod(ValueError):
    pass


def normalize_method(method: str) -> str:
    """daprd's `NormalizeMethod`: refuse `#`, `?`, NUL and control characters,
    clean the path, and drop leading `../` (its fix for path traversal).

    The string returned is the one forwarded: what was checked is what is sent.
    """
    for char in method:
        if char in "#?\x00" or ord(char) < 0x20 or ord(char) == 0x7F:
            raise InvalidMethod(f"method contains a forbidden character: {method!r}")
    cleaned = path_clean(method)
    while cleaned.startswith("../"):
        cleaned = cleaned[3:]
    if cleaned in (".", ".."):
        cleaned = ""
    return cleaned


class Call(NamedTuple):
    """One invocation, read and encoded: what a backend sends.

    `headers` are the caller's (checked, `content-type` added for an encoded body),
    without framing decided and without `traceparent`/`tracestate`: `trace` is the trace
    to carry on. `declared` is the length a streamed `body` declared (None: chunked).
    """

    method: str
    verb: str
    query: str
    headers: list[tuple[str, str]]
    trace: tuple[str, str] | None
    body: Body
    declared: int | None
    timeout: float | None

    @property
    def streamed(self) -> bool:
        return self.body is not None and not isinstance(self.body, bytes)


def prepare_call(
    target: str,
    method: str,
    *,
    http_method: str,
    json: Any,
    content: bytes | str | AsyncIterable[bytes] | None,
    headers: Mapping[str, str] | None,
    params: Mapping[str, str] | Sequence[tuple[str, str]] | None,
    timeout: float | None,
) -> Call:
    """`Dapr.invoke`'s arguments as a `Call`; raises as `Dapr.invoke` documents."""
    verb = http_method.upper()
    if verb not in VERBS:
        raise ValueError(f"http_method must be one of {sorted(VERBS)}, not {http_method!r}")
    try:
        method = normalize_method(method.lstrip("/"))
    except InvalidMethod as exc:
        path, mark, _ = method.partition("?")
        hint = f" (a query string goes in params=: invoke({target!r}, {path!r}, params=...))" if mark else ""
        raise DaprAPIError(
            500, "ERR_DIRECT_INVOKE", f"failed to invoke, id: {target}, err: invalid method: {exc}{hint}"
        ) from None
    body, content_type = _body(json, content)
    given = list((headers or {}).items())
    for name, value in given:
        problem = field_problem(name, value)
        if problem is not None:
            raise ValueError(f"headers: {problem}")
    # Framing comes from the body: a length for bytes, a streamed body's declared length
    # (counted as it is sent), chunked otherwise.
    streamed = body is not None and not isinstance(body, bytes)
    declared = declared_length(given) if streamed else None
    # As daprd: a traceparent it reads is passed on (a given one, else the trace of what
    # the app is handling), one it can't read is not.
    lowered = {name.lower(): value for name, value in given}
    trace = (
        context(lowered["traceparent"], lowered.get("tracestate"))
        if "traceparent" in lowered
        else CURRENT.get()
    )
    given = [(name, value) for name, value in given if name.lower() not in ("traceparent", "tracestate")]
    if content_type is not None and "content-type" not in lowered:
        given.append(("content-type", content_type))
    query = urlencode(list(params.items()) if isinstance(params, Mapping) else list(params or ()))
    return Call(method, verb, query, given, trace, body, declared, timeout)


def _body(json: Any, content: bytes | str | AsyncIterable[bytes] | None) -> tuple[Body, str | None]:
    if json is not None and content is not None:
        raise TypeError("give json or content, not both")
    if json is not None:
        from pydantic import BaseModel
        from pydantic_core import to_json, to_jsonable_python

        value = json.model_dump(mode="json") if isinstance(json, BaseModel) else to_jsonable_python(json)
        return to_json(value), "application/json"
    if isinstance(content, str):
        return content.encode(), "text/plain; charset=utf-8"
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content), None
    if content is None:
        return None, None
    return _iterate(content), None


async def _iterate(content: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in content:
        yield chunk
