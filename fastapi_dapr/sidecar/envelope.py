"""The CloudEvent envelope daprd wraps around a published message (reference 1.4-1.7).

Pure functions from a publish request to the bytes handed to the broker, and
from a broker message back to the event map the delivery engine routes on.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from .._go import parse_go_duration
from .._json import NO_VALUE, TooDeep, check_depth, decode_first, go_dumps
from .._media import is_content_type
from .._publishing import metadata_problem

__all__: list[str] = []

DEFAULT_SOURCE = "Dapr"
DEFAULT_TYPE = "com.dapr.event.sent"
DEFAULT_DATA_CONTENT_TYPE = "text/plain"
_OVERRIDES = ("id", "source", "type", "traceid", "tracestate", "traceparent", "subject")
_MAX_TIME = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)


class EnvelopeError(ValueError):
    """A publish request that cannot become a message."""


class BadMetadata(EnvelopeError):
    """A `metadata.*` value daprd cannot use (`rawPayload`, `ttlInSeconds`), or one that
    cannot become a header of the deliveries."""


class BadCloudEvent(EnvelopeError):
    """An `application/cloudevents+json` body that is not a JSON object."""


class _RandomPool(threading.local):
    """Random bytes from the OS, read 4 KiB at a time (kept as hex); one pool for each thread."""

    digits = ""
    used = 0


_pool = _RandomPool()


def _new_pool() -> None:
    # A forked child (a worker of `uvicorn --workers` or gunicorn) must not hand out the
    # bytes its parent had read and not used yet: they are its parent's next ids.
    global _pool
    _pool = _RandomPool()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_new_pool)


def new_id() -> str:
    """A random (version 4) UUID, as daprd gives each event.

    The random bytes come from the OS like uuid4's, read 4 KiB at a time: one
    system call per 256 ids instead of one each. Each thread has a pool of its
    own, and a forked child starts with an empty one, so no two ids are the same
    bytes.
    """
    pool = _pool
    start = pool.used
    if start + 32 > len(pool.digits):
        pool.digits, start = os.urandom(4096).hex(), 0
    pool.used = start + 32
    h = pool.digits[start : start + 32]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def parse_go_bool(text: str) -> bool:
    """Go's `strconv.ParseBool`."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(text)


def is_raw_payload(metadata: Mapping[str, str]) -> bool:
    """`metadata.rawPayload`, case-sensitive key, Go booleans (reference 1.2 step 3)."""
    value = metadata.get("rawPayload")
    if value is None or value == "":
        return False
    try:
        return parse_go_bool(value)
    except ValueError:
        raise BadMetadata(f"rawPayload value must be a valid boolean: actual is '{value}'") from None


def _lookup(metadata: Mapping[str, str], *keys: str) -> str:
    if not metadata:  # most publishes: nothing to look through
        return ""
    lowered = {key.lower() for key in keys}
    for key, value in metadata.items():
        if key.lower() in lowered:
            return value
    return ""


_INTEGER = re.compile(r"[+-]?[0-9]+")  # Go's strconv.ParseInt, base 10


def ttl_seconds(metadata: Mapping[str, str]) -> float | None:
    """The message TTL from `ttl` or `ttlInSeconds` (reference 1.6), or None.

    Read as components-contrib's `TryGetTTL` reads it, with daprd's messages. Raises
    `BadMetadata` for a value daprd ignores silently (not a duration nor an integer, an
    integer of 0 or less), and for a duration under a second (`0`, `0s`, `-10s`, `1ns`),
    which daprd takes and which expires the message at once: an expiration has whole seconds.
    """
    value = _lookup(metadata, "ttl", "ttlInSeconds")
    if not value:
        return None
    try:
        seconds = parse_go_duration(value)
    except ValueError:
        number = int(value) if _INTEGER.fullmatch(value) else None
        if number is None or not -(2**63) <= number < 2**63:  # an int64
            raise BadMetadata(f"ttl value must be a valid integer: actual is '{value}'") from None
        if number <= 0:
            raise BadMetadata(f"ttl value must be higher than zero: actual is '{number}'") from None
        return float(number)
    if seconds <= 0:
        raise BadMetadata(f"ttl value must be higher than zero: actual is '{value}'")
    if seconds < 1:
        raise BadMetadata(
            f"ttl value must be at least 1s, the precision of an expiration: actual is '{value}'"
        )
    return seconds


def rfc3339(moment: datetime.datetime) -> str:
    """Go's `time.RFC3339`: second precision, `Z` for UTC."""
    text = moment.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def now_local() -> datetime.datetime:
    return datetime.datetime.now().astimezone()


_time_cache: tuple[int, str] = (0, "")


def now_rfc3339() -> str:
    """`time.Now().Format(time.RFC3339)`: it changes once a second, so it is kept that long."""
    global _time_cache
    second = int(time.time())
    if _time_cache[0] != second:
        _time_cache = (second, rfc3339(now_local()))
    return _time_cache[1]


def expiration_after(seconds: float, now: datetime.datetime | None = None) -> str:
    start = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)
    try:
        moment = start + datetime.timedelta(seconds=seconds)
    except OverflowError:
        moment = _MAX_TIME
    return rfc3339(min(moment, _MAX_TIME))


class PublishRequest(NamedTuple):
    """What a publisher sent, before it becomes a message.

    `value`, when given, is the JSON value `data` encodes: a publisher in the
    same process already has it, and the envelope need not parse it again.
    (A named tuple: immutable, and cheap to make once per publish.)
    """

    pubsub: str
    topic: str
    data: bytes
    content_type: str = ""
    metadata: Mapping[str, str] = MappingProxyType({})
    traceparent: str = ""
    tracestate: str = ""
    value: Any = NO_VALUE


def _user_cloudevent(request: PublishRequest) -> dict[str, Any]:
    # Case A of reference 1.4: the publisher sent its own CloudEvent.
    try:
        event = decode_first(request.data)
    except ValueError as exc:
        raise BadCloudEvent(f"the body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise BadCloudEvent("the body is not a JSON object")
    event.setdefault("time", now_rfc3339())
    if "traceid" not in event:
        event["traceid"] = request.traceparent
        event["traceparent"] = request.traceparent
    event.setdefault("tracestate", request.tracestate)
    event["topic"] = request.topic
    event["pubsubname"] = request.pubsub
    for key, default in (
        ("source", DEFAULT_SOURCE),
        ("type", DEFAULT_TYPE),
        ("specversion", "1.0"),
    ):
        if event.get(key) is None:
            event[key] = default
    return event


def _new_cloudevent(request: PublishRequest, app_id: str) -> dict[str, Any]:
    # Case B of reference 1.4: daprd wraps the body.
    overrides: dict[str, str] = {}
    for key, value in request.metadata.items():
        lower = key.lower()
        if lower.startswith("cloudevent.") and lower[len("cloudevent.") :] in _OVERRIDES:
            overrides[lower[len("cloudevent.") :]] = value
    traceparent = overrides.get("traceparent") or overrides.get("traceid") or request.traceparent
    content_type = request.content_type or DEFAULT_DATA_CONTENT_TYPE
    event: dict[str, Any] = {
        "id": overrides.get("id") or new_id(),
        "specversion": "1.0",
        "datacontenttype": content_type,
        "source": overrides.get("source") or app_id or DEFAULT_SOURCE,
        "type": overrides.get("type") or DEFAULT_TYPE,
        "topic": request.topic,
        "pubsubname": request.pubsub,
        "traceid": traceparent,
        "traceparent": traceparent,
        "tracestate": overrides.get("tracestate") or request.tracestate,
        "time": now_rfc3339(),
    }
    if is_content_type(content_type, "application/json"):
        if request.value is not NO_VALUE:
            try:
                check_depth(request.data)  # as deep as a body read over HTTP may be
            except TooDeep as exc:
                raise EnvelopeError(f"the data cannot be published: {exc}") from None
            event["data"] = request.value
        else:
            try:
                event["data"] = decode_first(request.data)
            except ValueError:
                event["data"] = request.data.decode("utf-8", errors="replace")
    elif is_content_type(content_type, "application/octet-stream") or is_content_type(
        content_type, "application/cloudevents+protobuf"
    ):
        event["data_base64"] = base64.b64encode(request.data).decode()
    else:
        event["data"] = request.data.decode("utf-8", errors="replace")
    if overrides.get("subject"):
        event["subject"] = overrides["subject"]
    return event


def build_cloudevent(request: PublishRequest, app_id: str) -> dict[str, Any]:
    """The envelope daprd would build for `request`, TTL applied (reference 1.4, 1.6)."""
    if is_content_type(request.content_type, "application/cloudevents+json"):
        event = _user_cloudevent(request)
    else:
        event = _new_cloudevent(request, app_id)
    ttl = ttl_seconds(request.metadata)
    if ttl is not None:
        event["expiration"] = expiration_after(ttl)
    return event


def message_data(request: PublishRequest, app_id: str) -> tuple[bytes, dict[str, Any] | None]:
    """The bytes the broker stores (the envelope, or the body itself for raw
    payloads), and the envelope they encode, if there is one."""
    problem = metadata_problem(request.metadata)
    if problem is not None:
        raise BadMetadata(problem)
    if is_raw_payload(request.metadata):
        ttl_seconds(request.metadata)  # refused here too, for one rule on every path
        return request.data, None
    event = build_cloudevent(request, app_id)
    return go_dumps(event), event


def raw_payload_event(data: bytes, topic: str, pubsub: str) -> dict[str, Any]:
    """The CloudEvent daprd makes up for a raw message on delivery (reference 3.1 step 4)."""
    return {
        "id": new_id(),
        "specversion": "1.0",
        "datacontenttype": "application/octet-stream",
        "source": DEFAULT_SOURCE,
        "type": DEFAULT_TYPE,
        "topic": topic,
        "pubsubname": pubsub,
        "data_base64": base64.b64encode(data).decode(),
    }


def has_expired(event: Mapping[str, Any], now: datetime.datetime | None = None) -> bool:
    """daprd's `HasExpired`: an RFC 3339 `expiration` in the past; anything else is not."""
    value = event.get("expiration")
    if not isinstance(value, str) or not value:
        return False
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    if moment.tzinfo is None:
        return False
    return moment < (now or datetime.datetime.now(datetime.timezone.utc))
