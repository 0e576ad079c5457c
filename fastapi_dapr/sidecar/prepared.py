"""A message made ready for its POST to the app: its event, body, path and headers.

`Preparer.prepare` reads a broker message as daprd does (reference 3.1): the
CloudEvent it carries, or one made up for a raw payload; the trace carried in
its metadata; expiry; the route its rules choose. `Preparer.headers` gives the
headers of the POST (reference 3.2).
"""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json

from .._json import DELIVERY_DEPTH, go_dumps, loads
from ..brokers import Message
from .cel import RoutingError
from .delivery import ZERO_TRACEPARENT, Outcome, Route, clean_path, message_headers
from .engine import Engine
from .envelope import has_expired, raw_payload_event

__all__: list[str] = []


def _loads(data: bytes) -> Any:
    """The JSON value of a message: pydantic's parser, several times faster than the
    standard one, which reads what it refuses (a lone surrogate escape, a BOM)."""
    try:
        return from_json(data)
    except ValueError:
        return loads(data, DELIVERY_DEPTH)  # another publisher's message may nest deeper


class Prepared:
    """A message made ready for its POST: event, body and path (`Preparer.headers` gives the headers)."""

    __slots__ = ("body", "event", "event_id", "exact", "metadata", "path")

    def __init__(self) -> None:
        self.event: dict[str, Any] = {}
        # `event` is what `body` encodes (no trace attributes added), parsed for this
        # delivery alone (not the publisher's, shared with other subscriptions): the
        # handler's event may be validated from it, which does not copy what it holds.
        self.exact = True
        self.event_id: str | None = None
        self.body = b""
        self.metadata: dict[str, str] = {}
        self.path: str | None = None


class Preparer:
    """Prepares the messages of one route."""

    __slots__ = ("_plain_metadata", "_pubsub_header", "engine", "route")

    def __init__(self, engine: Engine, route: Route) -> None:
        self.engine = engine
        self.route = route
        # What every message without metadata of its own carries (reference 3.1).
        self._plain_metadata: dict[str, str] = {"pubsubName": route.pubsub}
        self._pubsub_header = (b"pubsubname", route.pubsub.encode())

    def prepare(self, message: Message) -> tuple[Prepared, str | None, Outcome | None]:
        """Build the event, route it; on failure, the outcome and why."""
        prepared = Prepared()
        if message.metadata:
            metadata = dict(message.metadata)
            metadata["pubsubName"] = self.route.pubsub
        else:
            metadata = self._plain_metadata  # shared, read only
        prepared.metadata = metadata
        if self.route.raw_payload:
            event = raw_payload_event(message.data, self.route.topic, self.route.pubsub)
            for key in ("traceid", "traceparent", "tracestate"):
                if metadata.get(key):
                    event[key] = metadata[key]
            if metadata.get("traceparent"):
                event["traceid"] = metadata["traceparent"]
            prepared.body = go_dumps(event)
        else:
            if message.decoded is not None:
                event = message.decoded  # type: ignore[assignment]  # read-only from here on
                prepared.exact = False  # shared: the handler gets its own, from the bytes
            else:
                try:
                    event = _loads(message.data)
                    if not isinstance(event, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    return prepared, f"the message is not a JSON CloudEvent ({exc})", "invalid"
            missing = (
                [k for k in ("traceid", "traceparent", "tracestate") if k not in event and k in metadata]
                if metadata is not self._plain_metadata  # that one carries no trace
                else None
            )
            if missing:
                event = {**event, **{key: metadata[key] for key in missing}}
                prepared.exact = False
            prepared.body = message.data
        prepared.event = event
        event_id = event.get("id")
        prepared.event_id = str(event_id) if event_id is not None else None
        if has_expired(event):
            return prepared, f"expired at {event.get('expiration')}", "expired"
        try:
            path = self.route.rules.route(event)
        except RoutingError as exc:
            return prepared, f"routing failed: {exc}", "invalid"
        if path is None:
            return prepared, "no routing rule matches and there is no default route", "unmatched"
        prepared.path = clean_path(path)
        return prepared, None, None

    def headers(self, prepared: Prepared) -> list[tuple[bytes, bytes]]:
        """The headers of the POST to the app (reference 3.2)."""
        event = prepared.event
        headers = self.engine.base_headers(b"application/cloudevents+json", prepared.body)
        if prepared.metadata is self._plain_metadata:
            headers.append(self._pubsub_header)
        else:
            headers.extend(message_headers(prepared.metadata))
        traceparent = event.get("traceparent") or event.get("traceid") or ZERO_TRACEPARENT
        headers.append((b"traceparent", str(traceparent).encode()))
        if event.get("tracestate"):
            headers.append((b"tracestate", str(event["tracestate"]).encode()))
        return headers
